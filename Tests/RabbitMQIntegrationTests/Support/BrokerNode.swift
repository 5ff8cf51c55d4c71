import Foundation
import RabbitMQTestSupport

/// One RabbitMQ node the tests read and drive through `rabbitmqctl`: the shared node (``shared``), a
/// ``DedicatedBroker``'s, the TLS node's (``TLSBroker/node``) or a cluster node's (``ClusterBroker/Node/broker``).
/// Every listing the tests make goes through ``list(_:_:)``, one parser for all of them.
struct BrokerNode: Sendable, Hashable, CustomStringConvertible {
    /// The full node name, such as `swiftrmq@localhost`, for `rabbitmqctl -n`.
    let name: String

    /// The short name `scripts/broker.sh` knows the node by, such as `swiftrmq`.
    var shortName: String { String(name.split(separator: "@").first ?? Substring(name)) }

    var description: String { name }

    /// The node `make test` starts for most tests (`RABBITMQ_NODE`).
    static let shared = BrokerNode(name: TestBroker.node)

    // MARK: rabbitmqctl

    /// Runs `rabbitmqctl -n NODE -q args…` and returns its standard output.
    @discardableResult
    func rabbitmqctl(_ arguments: String...) async throws -> String {
        try await rabbitmqctl(arguments)
    }

    /// Runs `rabbitmqctl -n NODE -q args…` and returns its standard output. A run that failed before reaching the
    /// node, or a listing that lost a race, is run again (``RabbitMQCtlError/isWorthRetrying``).
    @discardableResult
    func rabbitmqctl(_ arguments: [String]) async throws -> String {
        var attempt = 1
        while true {
            let started = ContinuousClock.now
            let result = try await Self.slots.run {
                try await ChildProcess.run(TestBroker.rabbitmqctlPath, ["-n", name, "-q"] + arguments)
            }
            let elapsed = ContinuousClock.now - started
            // A slow machine shows here first: a test that hits its hang guard can be read against these lines.
            if elapsed > .seconds(5) {
                print("rabbitmqctl -n \(name) \(arguments.joined(separator: " ")) took \(elapsed) (status \(result.status))")
            }
            if result.status == 0 { return result.output }
            let error = RabbitMQCtlError(arguments: arguments, status: result.status, output: result.output)
            guard attempt < RabbitMQCtlError.attempts, error.isWorthRetrying else { throw error }
            attempt += 1
            try await Task.sleep(for: .milliseconds(200 * attempt))
        }
    }

    /// The rows of `rabbitmqctl COMMAND COLUMNS… --no-table-headers` (such as `list_queues name consumers`), each
    /// with one field per column. The last column keeps any tabs it holds (client properties do).
    func list(_ command: String, _ columns: [String]) async throws -> [[String]] {
        let output = try await rabbitmqctl([command] + columns + ["--no-table-headers"])
        return output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "\t", maxSplits: max(columns.count - 1, 0),
                                    omittingEmptySubsequences: false)
            return fields.count == columns.count ? fields.map(String.init) : nil
        }
    }

    /// Each run boots an Erlang VM (about a second of CPU): at most a few at once, so that dozens of parallel
    /// tests polling the broker do not starve each other, and the nodes, of the machine's two cores.
    private static let slots = Slots(4)

    // MARK: Queues

    /// Every queue's counts, from one `list_queues` run.
    func queueCounts() async throws -> [String: BrokerQueueCounts] {
        let rows = try await list("list_queues", ["name", "messages_ready", "messages_unacknowledged", "consumers"])
        var counts: [String: BrokerQueueCounts] = [:]
        for row in rows {
            counts[row[0]] = BrokerQueueCounts(ready: Int(row[1]) ?? -1, unacked: Int(row[2]) ?? -1,
                                               consumers: Int(row[3]) ?? -1)
        }
        return counts
    }

    /// `queue`'s counts, or `nil` when the node has no such queue.
    func queueCounts(_ queue: String) async throws -> BrokerQueueCounts? {
        try await queueCounts()[queue]
    }

    // MARK: Connections

    /// The rows of `list_connections COLUMNS… client_properties` of the connections whose client-given name is
    /// `name`, without the client properties.
    func connections(named connectionName: String, _ columns: String...) async throws -> [[String]] {
        try await list("list_connections", columns + ["client_properties"]).compactMap { row in
            guard let properties = row.last,
                  properties.contains("\"connection_name\",longstr,\"\(connectionName)\"")
                    || properties.contains("{\"connection_name\",\"\(connectionName)\"}") else { return nil }
            return Array(row.dropLast())
        }
    }

    /// Closes, from the broker, the connections whose client-given name is `name`, as a network failure or an
    /// operator would; other tests' connections are left alone.
    func closeConnections(named connectionName: String, reason: String = "closed by the test") async throws {
        for row in try await connections(named: connectionName, "pid") {
            try await rabbitmqctl("close_connection", row[0], reason)
        }
    }
}

/// A queue's counts as `rabbitmqctl list_queues` reports them.
struct BrokerQueueCounts: Sendable, Equatable, CustomStringConvertible {
    var ready: Int
    var unacked: Int
    var consumers: Int

    var description: String { "ready \(ready), unacked \(unacked), consumers \(consumers)" }
}

/// `rabbitmqctl` failed.
struct RabbitMQCtlError: Error, CustomStringConvertible {
    let arguments: [String]
    let status: Int32
    /// What the CLI printed about the failure.
    let output: String
    var description: String {
        "rabbitmqctl \(arguments.joined(separator: " ")) exited with \(status): \(output.prefix(2_000))"
    }

    /// How many times a run worth retrying is made in all.
    static let attempts = 5

    /// Whether the run is worth making again:
    /// - exit status 78: the CLI's own Erlang distribution failed to start, which happens on a loaded machine; the
    ///   command never reached the node, so running it again is safe whatever it does;
    /// - a listing that lost a race: `list_*` asks every queue (or connection) process of the node in turn, and
    ///   when one exits meanwhile (tests delete their queues and close their connections all the time)
    ///   rabbitmqctl 3.10 fails with `{badrpc, {'EXIT', {normal, …}}}` instead of skipping it.
    var isWorthRetrying: Bool {
        status == 78 || (arguments.first?.hasPrefix("list_") == true && output.contains("badrpc"))
    }
}

/// At most `count` bodies run at once; the others wait their turn, in order, without holding a thread.
actor Slots {
    private var free: Int
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(_ count: Int) {
        free = count
    }

    func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        if free > 0 {
            free -= 1
        } else {
            await withCheckedContinuation { waiting.append($0) }
        }
        defer { release() }
        return try await body()
    }

    private func release() {
        if waiting.isEmpty { free += 1 } else { waiting.removeFirst().resume() }
    }
}
