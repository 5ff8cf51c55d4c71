import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

@Suite("Connection errors")
struct ConnectionTests {
    @Test("a malformed URL throws invalidURL and never echoes its password")
    func invalidURL() throws {
        let password = "url-secret-\(UUID().uuidString.prefix(8))"
        let urls = [
            "http://guest:\(password)@127.0.0.1:5672/",
            "amqp://guest:\(password)@127.0.0.1:99999/",
            "amqp://guest:\(password)@127.0.0.1:5672/a/b",
            "amqp://guest:\(password)@127.0.0.1:5672/?unknown=1",
            "amqp://guest:\(password)@127.0.0.1:5672/#fragment",
            "127.0.0.1:5672",
        ]
        for url in urls {
            let error = #expect(throws: RabbitMQError.self, "\(url)") {
                try RabbitMQClient.Configuration(url: url)
            }
            #expect(error?.code == .invalidURL, "\(url)")
            if let error {
                #expect(!Self.mentions(error, password), "\(url): \(error.debugDescription)")
            }
        }
    }

    @Test("a wrong password fails with authenticationFailed (403), before the handshake timeout, without showing the password")
    func wrongPassword() async throws {
        let password = "wrong-\(UUID().uuidString)"
        var configuration = try TestBroker.configuration
        configuration.password = password
        // Refused by the broker, not by the handshake timeout running out: that would fail with `timeout`, and
        // after 60 s, which the elapsed time is checked against (a hang guard a loaded machine cannot break).
        configuration.handshakeTimeout = .seconds(60)
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        defer { Task { await client.close() } }
        let start = ContinuousClock.now
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        let elapsed = ContinuousClock.now - start
        #expect(error?.code == .authenticationFailed)
        #expect(error?.replyCode == 403)
        #expect(error?.isRetryable == false)
        #expect(elapsed < configuration.handshakeTimeout, "took \(elapsed)")
        if let error {
            #expect(!Self.mentions(error, password), "\(error.debugDescription)")
        }
        #expect(!configuration.description.contains(password))
    }

    @Test("a virtual host that does not exist fails with vhostNotFound (530)")
    func missingVirtualHost() async throws {
        var configuration = try TestBroker.configuration
        configuration.virtualHost = TestBroker.uniqueName("no-such-vhost")
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        defer { Task { await client.close() } }
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        #expect(error?.code == .vhostNotFound)
        #expect(error?.replyCode == 530)
        #expect(error?.isRetryable == false)
    }

    /// How fast a refusal fails is measured by the benchmark (`RabbitMQBench connect-failures`); this checks what
    /// it fails with, and that it does not wait for the connect timeout.
    @Test("a port nothing listens on fails with connectionRefused, without waiting for the connect timeout")
    func closedPort() async throws {
        // A socket bound to a port but not listening holds the port (nobody else can take it) and refuses
        // connections to it.
        let socket = try TestSocket(listening: false)
        defer { socket.close() }
        var configuration = try TestBroker.configuration
        configuration.endpoints = [.init(host: "127.0.0.1", port: socket.port)]
        // Waiting for the connect timeout would fail with `timeout`, after 60 s: the code tells a refusal from
        // it, and the elapsed time is a hang guard no loaded machine reaches.
        configuration.connectTimeout = .seconds(60)
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let start = ContinuousClock.now
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        let elapsed = ContinuousClock.now - start
        await client.close()
        #expect(error?.code == .connectionRefused, "\(String(describing: error))")
        #expect(error?.isRetryable == true)
        #expect(elapsed < configuration.connectTimeout, "took \(elapsed)")
    }

    /// How soon after the handshake timeout the failure comes is measured by the benchmark
    /// (`RabbitMQBench connect-failures`); this checks what it fails with, and that the timeout did run out.
    @Test("a peer that accepts TCP and never speaks fails with timeout after the handshake timeout")
    func silentPeer() async throws {
        let socket = try TestSocket(listening: true)
        defer { socket.close() }
        var configuration = try TestBroker.configuration
        configuration.endpoints = [.init(host: "127.0.0.1", port: socket.port)]
        configuration.handshakeTimeout = .seconds(1)
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        defer { Task { await client.close() } }
        let start = ContinuousClock.now
        // The deadline is a hang guard: without a handshake timeout the connection would wait forever.
        let error = await #expect(throws: RabbitMQError.self) {
            try await TestBroker.withDeadline(.seconds(60)) { try await client.connect() }
        }
        let elapsed = ContinuousClock.now - start
        #expect(error?.code == .timeout, "\(String(describing: error))")
        #expect(error?.isRetryable == true)
        // Not before the timeout ran out (a lower bound: load only makes it later).
        #expect(elapsed >= .milliseconds(800), "took \(elapsed)")
    }

    @Test("the connection name shows in rabbitmqctl list_connections")
    func connectionName() async throws {
        let name = TestBroker.uniqueName("conn-name")
        let client = try TestBroker.makeClient { $0.connectionName = name }
        try await client.connect()
        let listed = try await eventually { try await Self.connectionListed(name) }
        #expect(listed)
        await client.close()
        #expect(try await eventually { try await !Self.connectionListed(name) })
    }

    @Test("close() may be called more than once, and later operations throw clientClosed")
    func closeIsIdempotent() async throws {
        let name = TestBroker.uniqueName("conn-close")
        let client = try TestBroker.makeClient { $0.connectionName = name }
        let queue = TestBroker.uniqueName("close")
        try await client.declare(Queue(queue, durable: false, exclusive: true))
        try await TestBroker.withDeadline(.seconds(20)) {
            await client.close()
            await client.close()
            async let first: Void = client.close()
            async let second: Void = client.close()
            _ = await (first, second)
        }
        #expect(try await eventually { try await !Self.connectionListed(name) })
        // The exclusive queue went with the connection.
        #expect(try await TestBroker.queueStats(queue) == nil)

        let operations: [(String, @Sendable () async throws -> Void)] = [
            ("connect", { try await client.connect() }),
            ("declare", { try await client.declare(Queue(queue, durable: false, exclusive: true)) }),
            ("queueInfo", { _ = try await client.inspectQueue(queue) }),
            ("publish", { try await client.publish(Data("late".utf8), routingKey: queue) }),
            ("openChannel", { _ = try await client.openChannel() }),
            ("consume", { _ = try await client.consume(queue) }),
        ]
        for (label, operation) in operations {
            let error = await #expect(throws: RabbitMQError.self, "\(label)") {
                try await TestBroker.withDeadline(.seconds(10)) { try await operation() }
            }
            #expect(error?.code == .clientClosed, "\(label): \(String(describing: error))")
        }
        #expect(try await TestBroker.queueStats(queue) == nil)
        #expect(try await !Self.connectionListed(name))
    }

    @Test("a client dropped without close() closes its connection and ends its I/O thread")
    func droppedClientLeaksNothing() async throws {
        let name = TestBroker.uniqueName("dropped")
        do {
            let client = try TestBroker.makeClient(name: name)
            try await client.connect()
            let queue = TestBroker.uniqueName("dropped")
            try await client.declare(Queue(queue, durable: false, autoDelete: true))
            try await client.publish(Data("x".utf8), routingKey: queue)
            #expect(try await Self.connectionListed("test \(name)"))
        }
        // The last reference is gone: the I/O thread closes the connection with the AMQP handshake and returns.
        // (Other tests' threads come and go meanwhile, so the broker's view is the check, not a thread count.)
        #expect(try await eventually { try await !Self.connectionListed("test \(name)") })
    }

    @Test("close() during 50 tasks' declarations: each succeeds or fails with clientClosed, none hangs")
    func closeDuringInFlightOperations() async throws {
        let name = TestBroker.uniqueName("conn-inflight")
        let prefix = TestBroker.uniqueName("inflight")
        let client = try TestBroker.makeClient { $0.connectionName = name }
        try await client.connect()
        let tasks = 50
        let declarationsPerTask = 10
        // Closed by the task that finishes this many declarations, so that most are still to come.
        let closeAfter = 50
        let outcomes = ConnectionTests.Outcomes()
        for index in 0..<tasks {
            Task {
                do {
                    for step in 0..<declarationsPerTask {
                        // Exclusive: whatever was declared goes away with the connection.
                        try await client.declare(Queue("\(prefix).\(index).\(step)", durable: false, exclusive: true))
                        if outcomes.step() == closeAfter { Task { await client.close() } }
                    }
                    outcomes.record(index, nil)
                } catch {
                    outcomes.record(index, error)
                }
            }
        }
        let finished = try await eventually(timeout: .seconds(30)) { outcomes.count == tasks }
        #expect(finished, "\(tasks - outcomes.count) of \(tasks) tasks never finished")
        try await TestBroker.withDeadline(.seconds(20)) { await client.close() }

        var interrupted = 0
        for (index, error) in outcomes.snapshot() {
            guard let error else { continue }
            interrupted += 1
            let rabbitError = error as? RabbitMQError
            #expect(rabbitError != nil, "task \(index) threw a foreign error: \(error)")
            #expect(rabbitError?.code == .clientClosed, "task \(index): \(error)")
        }
        // The close came in the middle of the declarations, so some were cut short.
        #expect(interrupted > 0, "every task finished before the close: the test did not exercise it")
        #expect(try await eventually { try await !Self.connectionListed(name) })
        #expect(try await eventually { try await Self.queues(withPrefix: prefix).isEmpty })
    }

    // MARK: Helpers

    /// Whether the error's texts mention `secret`.
    static func mentions(_ error: RabbitMQError, _ secret: String) -> Bool {
        [error.description, error.debugDescription, "\(error)", String(reflecting: error), error.message,
         error.replyText ?? ""].contains { $0.contains(secret) }
    }

    /// Whether a connection with client property `connection_name` equal to `name` is open at the broker.
    static func connectionListed(_ name: String) async throws -> Bool {
        try await TestBroker.rabbitmqctl("list_connections", "name", "client_properties", "--no-table-headers")
            .contains("\"\(name)\"")
    }

    /// The broker's queues whose names start with `prefix`.
    static func queues(withPrefix prefix: String) async throws -> [String] {
        try await BrokerNode.shared.queueCounts().keys.filter { $0.hasPrefix(prefix) }
    }
}

@Suite("Channel errors")
struct ChannelErrorTests {
    @Test("a passive declare of a missing queue throws channelClosed 404, and the client carries on")
    func missingQueue() async throws {
        try await TestBroker.withClient { client in
            let missing = TestBroker.uniqueName("missing")
            let error = await #expect(throws: RabbitMQError.self) { try await client.inspectQueue(missing) }
            #expect(error?.code == .channelClosed)
            #expect(error?.replyCode == 404)
            #expect(error?.replyText?.contains("NOT_FOUND") == true, "\(String(describing: error))")
            #expect(error?.isRetryable == false)
            #expect(try await TestBroker.queueStats(missing) == nil)

            let queue = TestBroker.uniqueName("after-404")
            let declared = try await client.declare(Queue(queue))
            #expect(declared.name == queue)
            try await client.publish(Data("after 404".utf8), routingKey: queue)
            let info = try await client.inspectQueue(queue)
            #expect(info.messageCount == 1)
            #expect(try await TestBroker.messageCount(queue) == 1)
            #expect(try await client.deleteQueue(queue) == 1)
        }
    }

    @Test("re-declaring a queue with other arguments throws channelClosed 406, and the client carries on")
    func redeclareWithOtherArguments() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("redeclare")
            try await client.declare(Queue(queue, arguments: QueueArguments(maxLength: 10)))
            let error = await #expect(throws: RabbitMQError.self) {
                try await client.declare(Queue(queue, arguments: QueueArguments(maxLength: 20)))
            }
            #expect(error?.code == .channelClosed)
            #expect(error?.replyCode == 406)
            #expect(error?.replyText?.contains("PRECONDITION_FAILED") == true, "\(String(describing: error))")

            // Same settings again: fine. The queue kept its first arguments.
            try await client.declare(Queue(queue, arguments: QueueArguments(maxLength: 10)))
            try await client.publish(Data("still here".utf8), routingKey: queue)
            #expect(try await client.inspectQueue(queue).messageCount == 1)
            #expect(try await client.deleteQueue(queue) == 1)
        }
    }

    @Test("a 404 closes only its own channel: it reports isOpen false and the reason, another channel works")
    func explicitChannels() async throws {
        try await TestBroker.withClient { client in
            let failing = try await client.openChannel()
            let healthy = try await client.openChannel()
            #expect(failing.number != healthy.number)
            #expect(failing.isOpen && healthy.isOpen)
            #expect(failing.closeReason == nil)

            let missing = TestBroker.uniqueName("missing")
            let error = await #expect(throws: RabbitMQError.self) { try await failing.inspectQueue(missing) }
            #expect(error?.code == .channelClosed)
            #expect(error?.replyCode == 404)
            #expect(!failing.isOpen)
            #expect(failing.closeReason?.code == .channelClosed)
            #expect(failing.closeReason?.replyCode == 404)

            // Every later call on the closed channel reports why it closed.
            let queue = TestBroker.uniqueName("explicit")
            let later = await #expect(throws: RabbitMQError.self) { try await failing.declare(Queue(queue)) }
            #expect(later?.replyCode == 404)
            #expect(try await TestBroker.queueStats(queue) == nil)

            #expect(healthy.isOpen)
            let declared = try await healthy.declare(Queue(queue))
            #expect(declared.name == queue)
            #expect(try await TestBroker.queueStats(queue) != nil)
            #expect(try await healthy.deleteQueue(queue) == 0)
            try await healthy.close()
            #expect(!healthy.isOpen)
            try await failing.close()
        }
    }

    @Test("100 concurrent declare-bind-delete sequences on one client all succeed and leave nothing behind")
    func concurrentDeclareBindDelete() async throws {
        try await TestBroker.withClient { client in
            let prefix = TestBroker.uniqueName("concurrent")
            let exchange = "\(prefix).exchange"
            try await client.declare(Exchange(exchange, type: .direct, durable: false))
            let count = 100
            try await TestBroker.withDeadline(.seconds(90)) {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<count {
                        group.addTask {
                            let queue = "\(prefix).\(index)"
                            try await client.declare(Queue(queue, durable: false))
                            try await client.bind(.queue(queue, to: exchange, routingKey: "key.\(index)"))
                            try await client.deleteQueue(queue)
                        }
                    }
                    try await group.waitForAll()
                }
            }
            #expect(try await ConnectionTests.queues(withPrefix: prefix).isEmpty)
            let bindings = try await TestBroker.rabbitmqctl("list_bindings", "source_name", "destination_name",
                                                      "--no-table-headers")
            #expect(!bindings.contains(prefix))
            try await client.deleteExchange(exchange)
        }
    }
}

// MARK: - Support

extension ConnectionTests {
    /// Outcomes of operations run as unstructured tasks, so that a test can stop waiting for those that hang.
    final class Outcomes: Sendable {
        private let results = Locked<[Int: (any Error)?]>([:])
        private let steps = Locked(0)

        /// Counts one step of progress and returns the count so far.
        func step() -> Int {
            steps.withLock { steps in
                steps += 1
                return steps
            }
        }

        /// Records how operation `index` ended: `nil` for success.
        func record(_ index: Int, _ error: (any Error)?) {
            results.withLock { $0[index] = error }
        }

        /// How many operations have ended.
        var count: Int { results.withLock { $0.count } }

        /// The outcomes so far, by operation index.
        func snapshot() -> [(Int, (any Error)?)] {
            results.withLock { $0.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
        }
    }
}
