import ArgumentParser
import Foundation
import Logging
import RabbitMQ
import Synchronization

/// The options the coordinator and its two child processes share.
struct ClientOptions: ParsableArguments {
    @Option(help: "The cluster's AMQP URLs, comma-separated; clients try them in this order.")
    var urls = "amqp://guest:guest@127.0.0.1:5881/,amqp://guest:guest@127.0.0.1:5882/,amqp://guest:guest@127.0.0.1:5883/"

    @Option(help: "Heartbeat of the clients, in seconds (a frozen node is detected after about two).")
    var heartbeat = 3

    @Option(help: "The clients' confirm and request timeouts, in seconds.")
    var timeout = 10

    @Option(help: "Messages with unique ids to publish.")
    var messages = 200_000

    @Option(help: "The seed of the fault schedule and of the handlers' failures.")
    var seed: UInt64?

    /// A client of the whole cluster with the soak's short heartbeat, timeouts and quick reconnection.
    func configuration(name: String) throws -> RabbitMQClient.Configuration {
        var configuration = try RabbitMQClient.Configuration(urls: urls.split(separator: ",").map(String.init))
        // Every client on the first node, so that the loss of the clients' node hits all of them at once.
        configuration.shuffleEndpoints = false
        configuration.connectionName = name
        configuration.heartbeat = .seconds(heartbeat)
        configuration.connectTimeout = .seconds(5)
        configuration.handshakeTimeout = .seconds(5)
        configuration.requestTimeout = .seconds(timeout)
        configuration.confirmTimeout = .seconds(timeout)
        configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
        return configuration
    }

    /// The calls' own timeout.
    var callTimeout: Duration { .seconds(timeout) }
}

/// The soak's names and topology: a direct exchange into a quorum work queue with retry tiers and a parking lot.
enum SoakTopology {
    static let exchange = "chaos.in"
    static let routingKey = "work"
    /// Every connection of the soak carries this prefix, so that faults find them with `list_connections`.
    static let connectionPrefix = "chaos-"

    static let retry = RetryTopology(
        workQueue: Queue("chaos.work", arguments: QueueArguments(type: .quorum)),
        policy: RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(250), multiplier: 2, maxDelay: .seconds(2)))

    static var topology: Topology {
        Topology {
            Exchange(exchange, type: .direct)
            retry.topology
            Binding.queue(retry.queueName, to: exchange, routingKey: routingKey)
        }
    }

    /// Every queue but the parking lot: where a message waits before it is processed.
    static var pendingQueues: [String] {
        retry.topology.queues.map(\.name).filter { $0 != retry.parkingLotName }
    }

    static func messageID(_ id: Int) -> String { "m\(id)" }

    static func id(of messageID: String?) -> Int? {
        guard let messageID, messageID.first == "m" else { return nil }
        return Int(messageID.dropFirst())
    }
}

/// The client's recoveries, timed from `connectionLost` to `recovered`.
final class RecoveryLog: Sendable {
    private struct State {
        var lostAt: ContinuousClock.Instant?
        var durations: [Double] = []
        var lost = 0
        var failed: [String] = []
    }

    private let state = Mutex(State())

    /// Follows `client`'s events until the client closes.
    static func watching(_ client: RabbitMQClient) -> RecoveryLog {
        let log = RecoveryLog()
        let events = client.connectionEvents()
        Task {
            for await event in events { log.note(event) }
        }
        return log
    }

    private func note(_ event: ConnectionEvent) {
        let now = ContinuousClock.now
        state.withLock { state in
            switch event {
            case .connectionLost:
                state.lost += 1
                if state.lostAt == nil { state.lostAt = now }
            case .recovered:
                if let lostAt = state.lostAt { state.durations.append((now - lostAt).seconds) }
                state.lostAt = nil
            case .recoveryFailed(let error):
                state.failed.append("\(error)")
                state.lostAt = nil
            default:
                break
            }
        }
    }

    var figures: RecoveryFigures {
        state.withLock { RecoveryFigures(durations: $0.durations, lost: $0.lost, failed: $0.failed,
                                         unrecovered: $0.lostAt != nil) }
    }
}

/// What a ``RecoveryLog`` saw.
struct RecoveryFigures: Codable, Sendable {
    /// Seconds from each `connectionLost` to the following `recovered`.
    var durations: [Double]
    /// `connectionLost` events.
    var lost: Int
    /// `recoveryFailed` errors.
    var failed: [String]
    /// Whether the connection was still lost at the end.
    var unrecovered: Bool
}

/// A logger for the library in a soak process: warnings and errors only, to stderr (a log file).
func soakLogger(_ label: String) -> Logger {
    var logger = Logger(label: label) { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = .warning
    return logger
}
