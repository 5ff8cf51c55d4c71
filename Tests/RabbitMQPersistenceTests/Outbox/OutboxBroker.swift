import Foundation
import RabbitMQTestSupport

/// A RabbitMQ node of the outbox tests' own, which they stop and start again: `scripts/broker.sh` on
/// `OUTBOX_BROKER_PORT` (default 5851), node `t-outbox-PORT`. `make test` stops it at the end if a test did not.
struct OutboxBroker: Sendable {
    let port: Int
    var name: String { "t-outbox-\(port)" }
    var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    static let shared = OutboxBroker(
        port: ProcessInfo.processInfo.environment["OUTBOX_BROKER_PORT"].flatMap { Int($0) } ?? 5851)

    /// `scripts/broker.sh`: `RABBITMQ_BROKER_SCRIPT`, else found relative to this source file.
    private static var script: String {
        if let script = ProcessInfo.processInfo.environment["RABBITMQ_BROKER_SCRIPT"], !script.isEmpty {
            return script
        }
        // #filePath is <root>/Tests/RabbitMQPersistenceTests/Outbox/OutboxBroker.swift.
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { root.deleteLastPathComponent() }
        return root.appendingPathComponent("scripts/broker.sh").path
    }

    /// Starts the node from empty data.
    func start() async throws { try await Self.broker(["start", name, String(port)]) }
    /// Stops it: the outage.
    func stop() async throws { try await Self.broker(["stop", name]) }
    /// Starts it again on the same data: durable queues and persistent messages are back.
    func restart() async throws { try await Self.broker(["restart", name]) }

    private static func broker(_ arguments: [String]) async throws {
        let result = try await ChildProcess.run(script, arguments)
        guard result.status == 0 else {
            throw ChildProcessError(message: "broker.sh \(arguments.joined(separator: " ")) exited with "
                                        + "\(result.status): \(result.output)")
        }
    }

    /// Runs `body` with the node started, and stops it afterwards, also when `body` throws.
    func with<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try await start()
        do {
            let result = try await body()
            try? await stop()
            return result
        } catch {
            try? await stop()
            throw error
        }
    }
}
