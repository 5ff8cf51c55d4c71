import ArgumentParser
import Foundation
import RabbitMQ

/// Several connections in one process at once: `--publishers` clients each publishing `--count` messages to a queue
/// of their own (`QUEUE-0`, `QUEUE-1`, …) with a window, while `--consumers` clients each consume `--count` from
/// those queues. The C baseline's counterpart is as many `publish` and `consume` processes run side by side.
struct Multi: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N publishing and M consuming connections at once; prints the aggregate rates.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Publishing connections.") var publishers = 4
    @Option(help: "Consuming connections (consumer i reads the queue publisher i writes).") var consumers = 4
    @Option(help: "Body size in bytes.") var size = 128
    @Option(help: "Unconfirmed messages in flight at most, per publisher.") var window = 1000
    @Option(help: "Prefetch count, per consumer.") var prefetch: UInt16 = 1000

    func run() async throws {
        let (count, prefix) = (connection.count, connection.queue)
        let setup = try connection.makeClient()
        for index in 0..<max(publishers, consumers) {
            try await setup.declare(Queue("\(prefix)-\(index)"))
            try await setup.purgeQueue("\(prefix)-\(index)")
        }
        await setup.close()
        let body = Data(repeating: 0x61, count: size)
        let (window, prefetch) = (window, prefetch)
        let durations = try await withThrowingTaskGroup(of: (Bool, Duration).self) { group in
            for index in 0..<consumers {
                let client = try connection.makeClient()
                group.addTask {
                    let channel = try await client.openChannel()
                    try await channel.setPrefetch(prefetch)
                    let (received, start) = try await Consume.consume(
                        try await channel.consume("\(prefix)-\(index)"), count: count)
                    let elapsed = ContinuousClock.now - (start ?? .now)
                    await client.close()
                    guard received == count else { throw ValidationError("consumer \(index) got \(received)") }
                    return (false, elapsed)
                }
            }
            for index in 0..<publishers {
                let client = try connection.makeClient()
                group.addTask {
                    let channel = try await client.openChannel()
                    try await channel.enableConfirms(window: window)
                    let start = ContinuousClock.now
                    try await Publish.publish(channel, count: count, body: body, queue: "\(prefix)-\(index)")
                    let elapsed = ContinuousClock.now - start
                    await client.close()
                    return (true, elapsed)
                }
            }
            var durations: [(Bool, Duration)] = []
            for try await duration in group { durations.append(duration) }
            return durations
        }
        func line(_ tag: String, clients: Int, publishing: Bool) -> String {
            let longest = durations.filter { $0.0 == publishing }.map(\.1).max() ?? .zero
            let seconds = Double(longest.components.seconds) + Double(longest.components.attoseconds) / 1e18
            let messages = clients * count
            return String(format: "%@_msgs=%d %@_secs=%.3f", tag, messages, tag, seconds)
        }
        print("mul \(line("pub", clients: publishers, publishing: true)) "
              + line("con", clients: consumers, publishing: false))
    }
}
