import Foundation
import RabbitMQ
import Testing
import RabbitMQTestSupport

@Suite("Topology against the broker")
struct TopologyTests {
    /// The names of one test's entities, all under a unique prefix.
    struct Names {
        let prefix: String
        var direct: String { "\(prefix).direct" }
        var fanout: String { "\(prefix).fanout" }
        var topic: String { "\(prefix).topic" }
        var headers: String { "\(prefix).headers" }
        var alternate: String { "\(prefix).alternate" }
        var audit: String { "\(prefix).audit" }
        var deadLetter: String { "\(prefix).dead-letter" }
        var quorum: String { "\(prefix).quorum" }
        var classic: String { "\(prefix).classic" }
        var directQueue: String { "\(prefix).direct-q" }
        var fanoutQueue: String { "\(prefix).fanout-q" }
        var headersQueue: String { "\(prefix).headers-q" }
        var unroutable: String { "\(prefix).unroutable" }
        var auditQueue: String { "\(prefix).audit-q" }

        var exchanges: [String] { [direct, fanout, topic, headers, alternate, audit, deadLetter] }
        var queues: [String] { [quorum, classic, directQueue, fanoutQueue, headersQueue, unroutable, auditQueue] }

        init() { prefix = TestBroker.uniqueName("topo") }
    }

    /// Every exchange type, a quorum queue with typed arguments, classic queues, queue bindings, an
    /// exchange-to-exchange binding into an internal exchange, a headers binding and an alternate exchange.
    static func topology(_ names: Names) -> Topology {
        let quorumArguments = QueueArguments(
            type: .quorum, messageTTL: .seconds(60), maxLength: 100, overflow: .rejectPublish,
            deadLetterExchange: names.deadLetter, deadLetterRoutingKey: "dead", singleActiveConsumer: true,
            deliveryLimit: 5)
        return Topology {
            Exchange(names.direct, type: .direct)
            Exchange(names.fanout, type: .fanout)
            Exchange(names.topic, type: .topic, alternateExchange: names.alternate)
            Exchange(names.headers, type: .headers)
            Exchange(names.alternate, type: .fanout)
            Exchange(names.audit, type: .topic, isInternal: true)
            Exchange(names.deadLetter, type: .direct)
            Queue(names.quorum, arguments: quorumArguments)
            Queue(names.classic, arguments: QueueArguments(type: .classic))
            Queue(names.directQueue, durable: false)
            Queue(names.fanoutQueue, durable: false)
            Queue(names.headersQueue, durable: false)
            Queue(names.unroutable, durable: false)
            Queue(names.auditQueue, durable: false)
            Binding.queue(names.quorum, to: names.topic, routingKey: "order.placed")
            Binding.queue(names.classic, to: names.topic, routingKey: "order.#")
            Binding.queue(names.directQueue, to: names.direct, routingKey: "key")
            Binding.queue(names.fanoutQueue, to: names.fanout)
            Binding.queue(names.headersQueue, to: names.headers,
                          arguments: ["x-match": "all", "format": "pdf", "kind": "report"])
            Binding.queue(names.unroutable, to: names.alternate)
            Binding.exchange(names.audit, to: names.topic, routingKey: "audit.#")
            Binding.queue(names.auditQueue, to: names.audit, routingKey: "#")
        }
    }

    /// Deletes what `topology(_:)` declares.
    static func delete(_ names: Names, with client: RabbitMQClient) async throws {
        for queue in names.queues { try await client.deleteQueue(queue) }
        for exchange in names.exchanges { try await client.deleteExchange(exchange) }
    }

    /// Runs `body` with a client, then deletes the names' entities (also when `body` fails).
    static func withTopology(_ names: Names, name: String = #function,
                             _ body: (RabbitMQClient) async throws -> Void) async throws {
        try await TestBroker.withClient(name: name) { client in
            do {
                try await body(client)
            } catch {
                try? await delete(names, with: client)
                throw error
            }
            try await delete(names, with: client)
        }
        #expect(try await BrokerNode.shared.queueCounts().keys.contains { $0.hasPrefix(names.prefix) } == false)
    }

    @Test("a topology with every exchange type, typed queue arguments and bindings is declared, twice")
    func declareAndVerifyAtBroker() async throws {
        let names = Names()
        try await Self.withTopology(names) { client in
            let topology = Self.topology(names)
            let first = try await client.declare(topology)
            #expect(first.map(\.name) == names.queues)
            #expect(first.allSatisfy { $0.messageCount == 0 && $0.consumerCount == 0 })
            // Idempotent.
            let second = try await client.declare(topology)
            #expect(second == first)

            let queues = try await Self.brokerQueues(prefix: names.prefix)
            #expect(Set(queues.keys) == Set(names.queues))
            let quorum = try #require(queues[names.quorum])
            #expect(quorum["type"] as? String == "quorum")
            #expect(quorum["durable"] as? Bool == true)
            let arguments = try #require(quorum["arguments"] as? [String: Any], "\(quorum)")
            #expect(arguments["x-queue-type"] as? String == "quorum")
            #expect(arguments["x-message-ttl"] as? Int == 60_000)
            #expect(arguments["x-max-length"] as? Int == 100)
            #expect(arguments["x-overflow"] as? String == "reject-publish")
            #expect(arguments["x-dead-letter-exchange"] as? String == names.deadLetter)
            #expect(arguments["x-dead-letter-routing-key"] as? String == "dead")
            #expect(arguments["x-single-active-consumer"] as? Bool == true)
            #expect(arguments["x-delivery-limit"] as? Int == 5)
            #expect(arguments.count == 8, "\(arguments)")
            #expect(queues[names.classic]?["type"] as? String == "classic")
            #expect(queues[names.classic]?["durable"] as? Bool == true)
            #expect(queues[names.directQueue]?["durable"] as? Bool == false)

            let exchanges = try await Self.brokerExchanges(prefix: names.prefix)
            #expect(exchanges[names.direct]?["type"] as? String == "direct")
            #expect(exchanges[names.fanout]?["type"] as? String == "fanout")
            #expect(exchanges[names.topic]?["type"] as? String == "topic")
            #expect(exchanges[names.headers]?["type"] as? String == "headers")
            #expect(exchanges[names.audit]?["type"] as? String == "topic")
            #expect(exchanges[names.audit]?["internal"] as? Bool == true)
            #expect(exchanges[names.topic]?["internal"] as? Bool == false)
            let topicArguments = exchanges[names.topic]?["arguments"] as? [String: Any]
            #expect(topicArguments?["alternate-exchange"] as? String == names.alternate,
                    "\(String(describing: topicArguments))")

            let bindings = try await Self.brokerBindings(prefix: names.prefix)
            let expected: Set<String> = [
                "\(names.topic) queue \(names.quorum) order.placed",
                "\(names.topic) queue \(names.classic) order.#",
                "\(names.direct) queue \(names.directQueue) key",
                "\(names.fanout) queue \(names.fanoutQueue) ",
                "\(names.headers) queue \(names.headersQueue) ",
                "\(names.alternate) queue \(names.unroutable) ",
                "\(names.topic) exchange \(names.audit) audit.#",
                "\(names.audit) queue \(names.auditQueue) #",
            ]
            #expect(Set(bindings.map(\.summary)) == expected)
            let headersBinding = bindings.first { $0.destination == names.headersQueue }
            #expect(headersBinding?.arguments["x-match"] as? String == "all")
            #expect(headersBinding?.arguments["format"] as? String == "pdf")
            #expect(headersBinding?.arguments["kind"] as? String == "report")
        }
    }

    @Test("messages are routed by the declared exchanges, bindings and the alternate exchange")
    func routing() async throws {
        let names = Names()
        try await Self.withTopology(names) { client in
            try await client.declare(Self.topology(names))
            func publish(_ exchange: String, _ key: String, headers: FieldTable = [:]) async throws {
                try await client.publish(Data("\(exchange) \(key)".utf8), to: exchange, routingKey: key,
                                         properties: MessageProperties(headers: headers))
            }
            try await publish(names.topic, "order.placed")      // quorum, classic
            try await publish(names.topic, "order.shipped")     // classic
            try await publish(names.topic, "audit.login")       // audit (exchange-to-exchange, internal)
            try await publish(names.topic, "nothing.matches")   // alternate exchange
            try await publish(names.direct, "key")              // direct-q
            try await publish(names.direct, "other-key")        // dropped: no binding, no alternate exchange
            try await publish(names.fanout, "any")              // fanout-q
            try await publish(names.headers, "", headers: ["format": "pdf", "kind": "report"])  // headers-q
            try await publish(names.headers, "", headers: ["format": "pdf"])                   // dropped: x-match all

            let expected = [
                names.quorum: 1, names.classic: 2, names.auditQueue: 1, names.unroutable: 1,
                names.directQueue: 1, names.fanoutQueue: 1, names.headersQueue: 1,
            ]
            // Counted by passive declares: the broker answers from each queue itself, the quorum queue from its
            // leader. rabbitmqctl's count of a quorum queue is a metric it refreshes periodically, and on a loaded
            // machine it stayed 0 for a minute, past the queue's 60 s TTL. The wait is a hang guard.
            var counts: [String: Int] = [:]
            _ = try await eventually {
                for queue in names.queues { counts[queue] = try await readyCount(client, queue) }
                return expected.allSatisfy { counts[$0.key] == $0.value }
            }
            for queue in names.queues {
                #expect(counts[queue] == expected[queue] ?? 0, "\(queue)")
            }
            let unroutable = try #require(try await client.get(from: names.unroutable, acknowledgement: .automatic))
            #expect(unroutable.routingKey == "nothing.matches")
            #expect(unroutable.exchange == names.topic)
            let audit = try #require(try await client.get(from: names.auditQueue, acknowledgement: .automatic))
            #expect(audit.routingKey == "audit.login")
        }
    }

    @Test("publishing straight to an internal exchange is refused with 403, and the client carries on")
    func internalExchangeRefusesPublishers() async throws {
        let names = Names()
        try await Self.withTopology(names) { client in
            try await client.declare(Self.topology(names))
            let error = await #expect(throws: RabbitMQError.self) {
                try await client.publish(Data("direct".utf8), to: names.audit, routingKey: "audit.x")
            }
            #expect(error?.code == .channelClosed)
            #expect(error?.replyCode == 403)
            // Through the exchange-to-exchange binding the message arrives.
            try await client.publish(Data("routed".utf8), to: names.topic, routingKey: "audit.x")
            #expect(try await eventually { try await TestBroker.messageCount(names.auditQueue) == 1 })
        }
    }

    @Test("unbind, delete if empty (406), purge and delete report what the broker did")
    func unbindPurgeDelete() async throws {
        let names = Names()
        try await Self.withTopology(names) { client in
            try await client.declare(Self.topology(names))
            for index in 0..<3 {
                try await client.publish(Data("\(index)".utf8), to: names.topic, routingKey: "order.shipped")
            }
            #expect(try await TestBroker.messageCount(names.classic) == 3)

            try await client.unbind(.queue(names.classic, to: names.topic, routingKey: "order.#"))
            #expect(try await !Self.brokerBindings(prefix: names.prefix).contains { $0.destination == names.classic })
            // Now nothing matches: the alternate exchange takes it.
            try await client.publish(Data("after unbind".utf8), to: names.topic, routingKey: "order.shipped")
            #expect(try await TestBroker.messageCount(names.unroutable) == 1)
            #expect(try await TestBroker.messageCount(names.classic) == 3)

            let notEmpty = await #expect(throws: RabbitMQError.self) {
                try await client.deleteQueue(names.classic, ifEmpty: true)
            }
            #expect(notEmpty?.code == .channelClosed)
            #expect(notEmpty?.replyCode == 406)
            #expect(try await TestBroker.messageCount(names.classic) == 3)

            let consumer = try await client.consume(names.directQueue, prefetch: 1)
            #expect(try await eventually { try await TestBroker.queueStats(names.directQueue)?.consumers == 1 })
            let inUse = await #expect(throws: RabbitMQError.self) {
                try await client.deleteQueue(names.directQueue, ifUnused: true)
            }
            #expect(inUse?.replyCode == 406)
            await consumer.cancel()

            #expect(try await client.purgeQueue(names.classic) == 3)
            #expect(try await TestBroker.messageCount(names.classic) == 0)
            try await client.bind(.queue(names.classic, to: names.direct, routingKey: "again"))
            try await client.publish(Data("a".utf8), to: names.direct, routingKey: "again")
            try await client.publish(Data("b".utf8), to: names.direct, routingKey: "again")
            #expect(try await client.deleteQueue(names.classic) == 2)
            #expect(try await TestBroker.queueStats(names.classic) == nil)
            try await client.declare(Queue(names.classic, arguments: QueueArguments(type: .classic)))
        }
    }

    @Test("a server-named queue gets a generated name and goes away with its connection")
    func serverNamedQueue() async throws {
        let client = try TestBroker.makeClient()
        try await client.connect()
        let info = try await client.declare(Queue.temporary())
        #expect(info.name.hasPrefix("amq.gen-"), "\(info.name)")
        let second = try await client.declare(Queue.temporary())
        #expect(second.name != info.name)
        try await client.publish(Data("to temporary".utf8), routingKey: info.name)
        #expect(try await client.inspectQueue(info.name).messageCount == 1)
        #expect(try await TestBroker.messageCount(info.name) == 1)
        await client.close()
        #expect(try await eventually {
            let first = try await TestBroker.queueStats(info.name)
            let other = try await TestBroker.queueStats(second.name)
            return first == nil && other == nil
        })
    }

    @Test("names over 255 bytes are refused with invalidArgument without contacting the broker")
    func clientSideValidation() async throws {
        // A client whose broker address refuses connections: contacting it would fail with connectionRefused.
        let socket = try TestSocket(listening: false)
        defer { socket.close() }
        var configuration = try TestBroker.configuration
        configuration.endpoints = [.init(host: "127.0.0.1", port: socket.port)]
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        defer { Task { await client.close() } }

        let long = String(repeating: "q", count: 256)
        let fits = String(repeating: "é", count: 127)   // 254 bytes
        let operations: [(String, @Sendable () async throws -> Void)] = [
            ("declare queue", { try await client.declare(Queue(long)) }),
            ("declare multibyte queue", { try await client.declare(Queue(fits + "é")) }),
            ("declare exchange", { try await client.declare(Exchange(long)) }),
            ("declare topology", { try await client.declare(Topology { Queue("fine"); Queue(long) }) }),
            ("bind", { try await client.bind(.queue("fine", to: "fine", routingKey: long)) }),
            ("queueInfo", { _ = try await client.inspectQueue(long) }),
            ("deleteQueue", { try await client.deleteQueue(long) }),
            ("purge", { try await client.purgeQueue(long) }),
            ("publish", { try await client.publish(Data(), routingKey: long) }),
        ]
        for (label, operation) in operations {
            let error = await #expect(throws: RabbitMQError.self, "\(label)") {
                try await TestBroker.withDeadline(.seconds(20)) { try await operation() }
            }
            #expect(error?.code == .invalidArgument, "\(label): \(String(describing: error))")
        }
        // A name that fits is sent, so this client then fails to connect.
        let refused = await #expect(throws: RabbitMQError.self) { try await client.declare(Queue(fits)) }
        #expect(refused?.code == .connectionRefused)
    }

    // MARK: What the broker holds

    /// `rabbitmqctl list_… --formatter json` rows whose `name` starts with `prefix`, by name.
    static func jsonRows(_ arguments: [String], prefix: String, key: String = "name") async throws -> [[String: Any]] {
        let output = try await TestBroker.rabbitmqctl(arguments + ["--formatter", "json"])
        let rows = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]] ?? []
        return rows.filter { ($0[key] as? String)?.hasPrefix(prefix) == true }
    }

    static func brokerQueues(prefix: String) async throws -> [String: [String: Any]] {
        let rows = try await jsonRows(["list_queues", "name", "type", "durable", "auto_delete", "arguments"], prefix: prefix)
        return byName(rows)
    }

    static func brokerExchanges(prefix: String) async throws -> [String: [String: Any]] {
        let rows = try await jsonRows(["list_exchanges", "name", "type", "internal", "arguments"], prefix: prefix)
        return byName(rows)
    }

    private static func byName(_ rows: [[String: Any]]) -> [String: [String: Any]] {
        Dictionary(rows.map { ($0["name"] as? String ?? "", normalised($0)) }, uniquingKeysWith: { first, _ in first })
    }

    struct BrokerBinding {
        var source: String
        var destination: String
        var destinationKind: String
        var routingKey: String
        var arguments: [String: Any]
        var summary: String { "\(source) \(destinationKind) \(destination) \(routingKey)" }
    }

    static func brokerBindings(prefix: String) async throws -> [BrokerBinding] {
        let rows = try await jsonRows(["list_bindings", "source_name", "destination_name", "destination_kind", "routing_key",
                                 "arguments"], prefix: prefix, key: "destination_name")
        return rows.filter { !($0["source_name"] as? String ?? "").isEmpty }.map { row in
            let row = normalised(row)
            return BrokerBinding(source: row["source_name"] as? String ?? "",
                                 destination: row["destination_name"] as? String ?? "",
                                 destinationKind: row["destination_kind"] as? String ?? "",
                                 routingKey: row["routing_key"] as? String ?? "",
                                 arguments: row["arguments"] as? [String: Any] ?? [:])
        }
    }

    /// rabbitmqctl prints a table as a list of `[key, type, value]` triples, and booleans as 0 or 1: make the
    /// table a dictionary of values and the booleans `Bool`.
    private static func normalised(_ row: [String: Any]) -> [String: Any] {
        var row = row
        if let triples = row["arguments"] as? [[Any]] {
            var arguments: [String: Any] = [:]
            for triple in triples where triple.count == 3 {
                guard let key = triple[0] as? String else { continue }
                let type = triple[1] as? String
                arguments[key] = type == "bool" ? ((triple[2] as? Int) == 1 || (triple[2] as? Bool) == true) : triple[2]
            }
            row["arguments"] = arguments
        }
        for key in ["durable", "auto_delete", "internal"] {
            if let flag = row[key] as? Int { row[key] = flag == 1 }
        }
        return row
    }
}
