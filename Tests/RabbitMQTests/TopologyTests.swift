import Testing

@testable import RabbitMQ

// MARK: - Exchange

@Suite("Exchange")
struct ExchangeTests {
    @Test("Defaults: direct, durable, not auto-delete, not internal, no arguments")
    func defaults() {
        let exchange = Exchange("orders")
        #expect(exchange.name == "orders")
        #expect(exchange.type == .direct)
        #expect(exchange.type.rawValue == "direct")
        #expect(exchange.durable)
        #expect(!exchange.autoDelete)
        #expect(!exchange.isInternal)
        #expect(exchange.alternateExchange == nil)
        #expect(exchange.declareArguments.isEmpty)
    }

    @Test("Exchange types: the four AMQP ones and plugin types")
    func types() {
        let names = [ExchangeType.direct, .fanout, .topic, .headers].map(\.rawValue)
        #expect(names == ["direct", "fanout", "topic", "headers"])
        let delayed = ExchangeType(rawValue: "x-delayed-message")
        #expect(delayed.rawValue == "x-delayed-message")
        #expect(delayed.description == "x-delayed-message")
        let literal: ExchangeType = "x-consistent-hash"
        #expect(literal == ExchangeType(rawValue: "x-consistent-hash"))
        #expect(ExchangeType(rawValue: "topic") == .topic)
    }

    @Test("declareArguments merges the alternate exchange with the raw arguments, the typed field winning")
    func declareArguments() {
        let exchange = Exchange(
            "delayed", type: .init(rawValue: "x-delayed-message"), alternateExchange: "unroutable",
            arguments: ["x-delayed-type": "topic"]
        )
        #expect(exchange.declareArguments == ["x-delayed-type": "topic", "alternate-exchange": "unroutable"])
        #expect(exchange.declareArguments["alternate-exchange"] == .string("unroutable"))

        var overridden = Exchange("orders", alternateExchange: "typed", arguments: ["alternate-exchange": "raw"])
        #expect(overridden.declareArguments["alternate-exchange"] == .string("typed"))
        #expect(overridden.declareArguments.count == 1)
        overridden.alternateExchange = nil
        #expect(overridden.declareArguments["alternate-exchange"] == .string("raw"))
    }

    @Test("A valid exchange passes validation")
    func valid() {
        let exchange = Exchange("orders", type: .topic, alternateExchange: "orders.ae", arguments: ["x-custom": 1])
        #expect(throws: Never.self) { try exchange.validate() }
        // The same alternate exchange in both places is not a conflict.
        let same = Exchange("orders", alternateExchange: "ae", arguments: ["alternate-exchange": "ae"])
        #expect(throws: Never.self) { try same.validate() }
    }

    @Test("Validation refuses the default exchange, amq. names, long names, and conflicting arguments")
    func invalid() throws {
        let empty = try #require(throws: RabbitMQError.self) { try Exchange("").validate() }
        #expect(empty.code == .invalidArgument)
        #expect(empty.operation == "exchange.declare")
        #expect(empty.message.contains("default exchange"))

        let reserved = try #require(throws: RabbitMQError.self) { try Exchange("amq.custom", type: .topic).validate() }
        #expect(reserved.code == .invalidArgument)
        #expect(reserved.message.contains("\"amq.custom\""))
        #expect(reserved.message.contains("reserved prefix"))

        let long = try #require(throws: RabbitMQError.self) { try Exchange(String(repeating: "ß", count: 128)).validate() }
        #expect(long.message.contains("exchange name"))
        #expect(long.message.contains("256 bytes"))

        let noType = try #require(throws: RabbitMQError.self) { try Exchange("x", type: ExchangeType(rawValue: "")).validate() }
        #expect(noType.message.contains("empty type"))

        let conflict = try #require(throws: RabbitMQError.self) {
            try Exchange("x", alternateExchange: "a", arguments: ["alternate-exchange": "b"]).validate()
        }
        #expect(conflict.message.contains("alternateExchange"))
        #expect(conflict.message.contains("remove one"))

        var longKey = FieldTable()
        longKey[String(repeating: "k", count: 200)] = 1
        let keyError = try #require(throws: RabbitMQError.self) { try Exchange("x", arguments: longKey).validate() }
        #expect(keyError.message.contains("exchange arguments"))
        #expect(keyError.message.contains("200 bytes"))
    }
}

// MARK: - Queue arguments

@Suite("Queue arguments")
struct QueueArgumentsTests {
    /// Arguments with every typed property set.
    static let full = QueueArguments(
        type: .quorum,
        messageTTL: .seconds(60),
        expires: .seconds(3600),
        maxLength: 10_000,
        maxLengthBytes: 1_048_576,
        overflow: .rejectPublish,
        deadLetterExchange: "orders.dead",
        deadLetterRoutingKey: "dead.orders",
        deadLetterStrategy: .atLeastOnce,
        singleActiveConsumer: true,
        deliveryLimit: 5,
        maxPriority: 9
    )

    @Test("Unset by default: the table is empty")
    func empty() {
        let arguments = QueueArguments()
        #expect(arguments.isEmpty)
        #expect(arguments.table.isEmpty)
        #expect(arguments.type == nil)
        #expect(!arguments.singleActiveConsumer)
    }

    @Test("Every typed property maps to its x- key, as .int64 for numbers and .string for names")
    func everyField() {
        let table = Self.full.table
        let expected: [FieldTable.Entry] = [
            .init(key: "x-queue-type", value: .string("quorum")),
            .init(key: "x-message-ttl", value: .int64(60_000)),
            .init(key: "x-expires", value: .int64(3_600_000)),
            .init(key: "x-max-length", value: .int64(10_000)),
            .init(key: "x-max-length-bytes", value: .int64(1_048_576)),
            .init(key: "x-overflow", value: .string("reject-publish")),
            .init(key: "x-dead-letter-exchange", value: .string("orders.dead")),
            .init(key: "x-dead-letter-routing-key", value: .string("dead.orders")),
            .init(key: "x-dead-letter-strategy", value: .string("at-least-once")),
            .init(key: "x-single-active-consumer", value: .bool(true)),
            .init(key: "x-delivery-limit", value: .int64(5)),
            .init(key: "x-max-priority", value: .int64(9)),
        ]
        #expect(table.entries == expected)
        #expect(!Self.full.isEmpty)
    }

    @Test("Queue types and overflow behaviours have the broker's names")
    func rawValues() {
        #expect([QueueType.classic, .quorum, .stream].map(\.rawValue) == ["classic", "quorum", "stream"])
        #expect(
            [OverflowBehavior.dropHead, .rejectPublish, .rejectPublishDeadLetter].map(\.rawValue)
                == ["drop-head", "reject-publish", "reject-publish-dlx"]
        )
        #expect([DeadLetterStrategy.atMostOnce, .atLeastOnce].map(\.rawValue) == ["at-most-once", "at-least-once"])
        #expect(QueueArguments(type: .classic).table["x-queue-type"] == .string("classic"))
        #expect(QueueArguments(type: .stream).table["x-queue-type"] == .string("stream"))
        #expect(QueueArguments(overflow: .dropHead).table["x-overflow"] == .string("drop-head"))
        #expect(
            QueueArguments(overflow: .rejectPublishDeadLetter).table["x-overflow"] == .string("reject-publish-dlx")
        )
    }

    @Test("Durations are sent in whole milliseconds, rounded down")
    func durations() {
        let arguments = QueueArguments(messageTTL: .microseconds(1_999), expires: .seconds(1.5))
        #expect(arguments.table["x-message-ttl"] == .int64(1))
        #expect(arguments.table["x-expires"] == .int64(1_500))
        #expect(QueueArguments(messageTTL: .zero).table["x-message-ttl"] == .int64(0))
        #expect(QueueArguments.milliseconds(.seconds(Int64.max)) == Int64.max)
        #expect(QueueArguments.milliseconds(.milliseconds(-1500)) == -1500)
    }

    @Test("An empty dead-letter exchange (the default exchange) is sent; singleActiveConsumer false is not")
    func emptyDeadLetterExchange() {
        let arguments = QueueArguments(deadLetterExchange: "", deadLetterRoutingKey: "retry")
        #expect(arguments.table.entries == [
            .init(key: "x-dead-letter-exchange", value: .string("")),
            .init(key: "x-dead-letter-routing-key", value: .string("retry")),
        ])
        #expect(throws: Never.self) { try arguments.validate() }
        #expect(QueueArguments(singleActiveConsumer: false).table["x-single-active-consumer"] == nil)
    }

    @Test("Round trip: arguments → table → arguments → table")
    func roundTrip() {
        var arguments = Self.full
        arguments.extra = ["x-max-age": "7D", "x-queue-leader-locator": "balanced"]
        let table = arguments.table
        #expect(table.count == 14)
        let parsed = QueueArguments(table: table)
        #expect(parsed == arguments)
        #expect(parsed.table == table)
    }

    @Test("Parsing accepts any integer width and keeps what it cannot type in extra")
    func parsing() {
        let table: FieldTable = [
            "x-message-ttl": .int32(5_000),
            "x-expires": .uint32(60_000),
            "x-max-length": .int16(100),
            "x-max-length-bytes": .uint64(1 << 20),
            "x-max-priority": .uint8(5),
            "x-delivery-limit": .int8(-1),
            "x-queue-type": .bytes(Array("stream".utf8)),
            "x-single-active-consumer": .bool(false),
            "x-overflow": .int64(3),  // wrong type: kept raw
            "x-max-priority-typo": 1,  // unknown key
        ]
        var bigPriority = table
        bigPriority["x-max-priority"] = .int64(1_000)  // does not fit a UInt8: kept raw

        let arguments = QueueArguments(table: table)
        #expect(arguments.messageTTL == .milliseconds(5_000))
        #expect(arguments.expires == .seconds(60))
        #expect(arguments.maxLength == 100)
        #expect(arguments.maxLengthBytes == 1_048_576)
        #expect(arguments.maxPriority == 5)
        #expect(arguments.deliveryLimit == -1)
        #expect(arguments.type == .stream)
        #expect(!arguments.singleActiveConsumer)
        #expect(arguments.overflow == nil)
        #expect(arguments.extra == ["x-overflow": .int64(3), "x-max-priority-typo": 1])
        // What could not be typed is still sent.
        #expect(arguments.table["x-overflow"] == .int64(3))
        #expect(arguments.table["x-max-priority-typo"] == .int64(1))

        let big = QueueArguments(table: bigPriority)
        #expect(big.maxPriority == nil)
        #expect(big.extra["x-max-priority"] == .int64(1_000))
    }

    @Test("A typed property wins over the same key in extra; validate reports a disagreement")
    func extraConflicts() throws {
        let conflicting = QueueArguments(messageTTL: .seconds(1), extra: ["x-message-ttl": 5, "x-other": "kept"])
        #expect(conflicting.table.entries == [
            .init(key: "x-message-ttl", value: .int64(1_000)),
            .init(key: "x-other", value: .string("kept")),
        ])
        let error = try #require(throws: RabbitMQError.self) { try conflicting.validate() }
        #expect(error.code == .invalidArgument)
        #expect(error.operation == "queue.declare")
        #expect(error.message.contains("x-message-ttl is set both by a typed property"))

        // The same value in another integer width is no conflict.
        let equivalent = QueueArguments(maxLength: 10, extra: ["x-max-length": .int32(10)])
        #expect(throws: Never.self) { try equivalent.validate() }
        #expect(equivalent.table["x-max-length"] == .int64(10))

        // A typed property left unset lets the extra value through.
        let rawOnly = QueueArguments(extra: ["x-single-active-consumer": true])
        #expect(rawOnly.table["x-single-active-consumer"] == .bool(true))
        #expect(throws: Never.self) { try rawOnly.validate() }
    }

    @Test("Validation refuses values the broker refuses")
    func invalidValues() throws {
        let cases: [(QueueArguments, String)] = [
            (QueueArguments(messageTTL: .milliseconds(-1)), "x-message-ttl"),
            (QueueArguments(messageTTL: .milliseconds(4_294_967_296)), "x-message-ttl"),
            (QueueArguments(expires: .zero), "x-expires"),
            (QueueArguments(expires: .microseconds(999)), "x-expires"),
            (QueueArguments(maxLength: -1), "x-max-length is -1"),
            (QueueArguments(maxLengthBytes: -5), "x-max-length-bytes is -5"),
            (QueueArguments(deadLetterRoutingKey: "retry"), "deadLetterRoutingKey is set without deadLetterExchange"),
            (QueueArguments(deadLetterExchange: String(repeating: "d", count: 256)), "dead-letter exchange name"),
        ]
        for (arguments, fragment) in cases {
            let error = try #require(throws: RabbitMQError.self) { try arguments.validate() }
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(fragment), "\(error.message)")
        }
        let ttl = try #require(throws: RabbitMQError.self) { try QueueArguments(expires: .zero).validate() }
        #expect(ttl.message.contains("from 1 to 4294967295 ms"))

        // Limits themselves pass.
        let limits = QueueArguments(
            messageTTL: .milliseconds(4_294_967_295), expires: .milliseconds(1), maxLength: 0, maxLengthBytes: 0
        )
        #expect(throws: Never.self) { try limits.validate() }
        // A routing key with the dead-letter exchange in extra passes.
        let rawExchange = QueueArguments(deadLetterRoutingKey: "k", extra: ["x-dead-letter-exchange": "dlx"])
        #expect(throws: Never.self) { try rawExchange.validate() }
    }
}

// MARK: - Queue

@Suite("Queue")
struct QueueTests {
    @Test("Defaults: durable, not exclusive, not auto-delete, no arguments")
    func defaults() {
        let queue = Queue("orders.coupon")
        #expect(queue.name == "orders.coupon")
        #expect(queue.durable)
        #expect(!queue.exclusive)
        #expect(!queue.autoDelete)
        #expect(queue.arguments == QueueArguments())
        #expect(queue.declareArguments.isEmpty)
        #expect(!queue.isServerNamed)
    }

    @Test("A temporary queue is server-named, transient, exclusive and auto-delete")
    func temporary() {
        let queue = Queue.temporary(arguments: QueueArguments(maxLength: 100))
        #expect(queue.name.isEmpty)
        #expect(queue.isServerNamed)
        #expect(!queue.durable)
        #expect(queue.exclusive)
        #expect(queue.autoDelete)
        #expect(queue.declareArguments == ["x-max-length": 100])
        #expect(throws: Never.self) { try queue.validate() }
    }

    @Test("Valid queues pass")
    func valid() {
        #expect(throws: Never.self) { try Queue("orders", arguments: QueueArguments(type: .quorum)).validate() }
        #expect(throws: Never.self) { try Queue("events", arguments: QueueArguments(type: .stream)).validate() }
        #expect(throws: Never.self) { try Queue("scratch", durable: false, exclusive: true).validate() }
        #expect(throws: Never.self) { try Queue("amqp.lookalike").validate() }
    }

    @Test("Queue names starting with amq. are reserved")
    func reservedPrefix() throws {
        let error = try #require(throws: RabbitMQError.self) { try Queue("amq.gen-mine").validate() }
        #expect(error.code == .invalidArgument)
        #expect(error.operation == "queue.declare")
        #expect(error.message.contains("\"amq.gen-mine\""))
        #expect(error.message.contains("reserved prefix \"amq.\""))
        #expect(error.message.contains("403"))
    }

    @Test("Too long queue names are measured in bytes")
    func longName() throws {
        let name = String(repeating: "日", count: 86)  // 258 bytes, 86 characters
        let error = try #require(throws: RabbitMQError.self) { try Queue(name).validate() }
        #expect(error.message.contains("queue name"))
        #expect(error.message.contains("258 bytes"))
    }

    @Test("Quorum and stream queues must be durable, shared, kept and named")
    func replicatedConstraints() throws {
        let exclusive = try #require(throws: RabbitMQError.self) {
            try Queue("orders", exclusive: true, arguments: QueueArguments(type: .quorum)).validate()
        }
        #expect(exclusive.code == .invalidArgument)
        #expect(exclusive.operation == "queue.declare")
        #expect(exclusive.message.hasPrefix("quorum queue \"orders\" must be not exclusive:"))

        let transient = try #require(throws: RabbitMQError.self) {
            try Queue("orders", durable: false, arguments: QueueArguments(type: .quorum)).validate()
        }
        #expect(transient.message.hasPrefix("quorum queue \"orders\" must be durable:"))

        let autoDelete = try #require(throws: RabbitMQError.self) {
            try Queue("events", autoDelete: true, arguments: QueueArguments(type: .stream)).validate()
        }
        #expect(autoDelete.message.hasPrefix("stream queue \"events\" must be not auto-delete:"))

        let everything = try #require(throws: RabbitMQError.self) {
            try Queue.temporary(arguments: QueueArguments(type: .stream)).validate()
        }
        #expect(everything.message.hasPrefix(
            "a server-named stream queue must be durable, not exclusive, not auto-delete, named by the client:"
        ))

        // A type given as a raw argument is checked too.
        let raw = try #require(throws: RabbitMQError.self) {
            try Queue("raw", exclusive: true, arguments: QueueArguments(extra: ["x-queue-type": "quorum"])).validate()
        }
        #expect(raw.message.hasPrefix("quorum queue \"raw\" must be not exclusive:"))

        // The same flags are fine for a classic queue.
        let classic = Queue("c", durable: false, exclusive: true, autoDelete: true, arguments: .init(type: .classic))
        #expect(throws: Never.self) { try classic.validate() }
    }

    @Test("Argument problems are reported by the queue")
    func argumentProblems() throws {
        let error = try #require(throws: RabbitMQError.self) {
            try Queue("orders", arguments: QueueArguments(expires: .zero)).validate()
        }
        #expect(error.message.contains("x-expires"))
    }
}

// MARK: - Binding

@Suite("Binding")
struct BindingTests {
    @Test("Static constructors read as 'bind this to that'")
    func constructors() {
        let toQueue = Binding.queue("orders.coupon", to: "orders", routingKey: "order.placed")
        #expect(toQueue.source == "orders")
        #expect(toQueue.destination == .queue("orders.coupon"))
        #expect(toQueue.destination.name == "orders.coupon")
        #expect(toQueue.routingKey == "order.placed")
        #expect(toQueue.arguments.isEmpty)
        #expect(toQueue.operation == "queue.bind")

        let toExchange = Binding.exchange("audit", to: "orders", routingKey: "#")
        #expect(toExchange.source == "orders")
        #expect(toExchange.destination == .exchange("audit"))
        #expect(toExchange.routingKey == "#")
        #expect(toExchange.operation == "exchange.bind")

        let headers = Binding.queue("eu", to: "by-region", arguments: ["x-match": "any", "region": "eu"])
        #expect(headers.routingKey == "")
        #expect(headers.arguments["x-match"] == .string("any"))
        #expect(headers == Binding(from: "by-region", to: .queue("eu"), arguments: ["x-match": "any", "region": "eu"]))
        #expect(headers != Binding(from: "by-region", to: .queue("eu"), arguments: ["x-match": "all", "region": "eu"]))
    }

    @Test("Valid bindings pass, including to built-in exchanges and unknown entities")
    func valid() {
        #expect(throws: Never.self) { try Binding.queue("q", to: "amq.topic", routingKey: "a.*.c").validate() }
        #expect(throws: Never.self) { try Binding.exchange("e2", to: "e1").validate() }
        let key = String(repeating: "é", count: 127) + "a"  // 255 bytes
        #expect(throws: Never.self) { try Binding.queue("q", to: "e", routingKey: key).validate() }
    }

    @Test("Empty names and long keys are refused")
    func invalid() throws {
        let noSource = try #require(throws: RabbitMQError.self) { try Binding.queue("q", to: "").validate() }
        #expect(noSource.code == .invalidArgument)
        #expect(noSource.operation == "queue.bind")
        #expect(noSource.message.contains("default exchange cannot be bound"))

        let noQueue = try #require(throws: RabbitMQError.self) { try Binding.queue("", to: "orders").validate() }
        #expect(noQueue.message.contains("empty queue name"))

        let noDestination = try #require(throws: RabbitMQError.self) { try Binding.exchange("", to: "orders").validate() }
        #expect(noDestination.operation == "exchange.bind")
        #expect(noDestination.message.contains("empty destination exchange"))

        let key = String(repeating: "é", count: 128)  // 256 bytes
        let longKey = try #require(throws: RabbitMQError.self) { try Binding.queue("q", to: "e", routingKey: key).validate() }
        #expect(longKey.message.contains("routing key"))
        #expect(longKey.message.contains("256 bytes"))

        var arguments = FieldTable()
        arguments[String(repeating: "h", count: 129)] = "v"
        let longArgument = try #require(throws: RabbitMQError.self) {
            try Binding.queue("q", to: "headers", arguments: arguments).validate()
        }
        #expect(longArgument.message.contains("binding arguments"))
    }
}

// MARK: - Topology

@Suite("Topology")
struct TopologyTests {
    @Test("The builder collects exchanges, queues and bindings in order, with if, else, for, optionals and arrays")
    func builder() {
        let auditing = true
        let archive = false
        let optionalQueue: Queue? = Queue("maybe")
        let missing: Binding? = nil
        let regions = ["eu", "us"]

        let topology = Topology {
            Exchange("orders", type: .topic)
            Queue("orders.coupon", arguments: QueueArguments(type: .quorum))
            Binding.queue("orders.coupon", to: "orders", routingKey: "order.placed")
            if auditing {
                Exchange("audit", type: .fanout)
                Binding.exchange("audit", to: "orders", routingKey: "#")
            }
            if archive {
                Queue("archive")
            } else {
                Queue("no-archive")
            }
            for region in regions {
                Queue("orders.\(region)")
                Binding.queue("orders.\(region)", to: "orders", routingKey: "\(region).#")
            }
            optionalQueue
            missing
            [Exchange("a"), Exchange("b")]
            Topology(queues: [Queue("nested")])
        }

        #expect(topology.exchanges.map(\.name) == ["orders", "audit", "a", "b"])
        #expect(
            topology.queues.map(\.name)
                == ["orders.coupon", "no-archive", "orders.eu", "orders.us", "maybe", "nested"]
        )
        #expect(topology.bindings.map(\.destination.name) == ["orders.coupon", "audit", "orders.eu", "orders.us"])
        #expect(topology.bindings[1] == Binding.exchange("audit", to: "orders", routingKey: "#"))
        #expect(throws: Never.self) { try topology.validate() }
    }

    @Test("An empty builder and the default initializer give an empty topology")
    func empty() {
        let built = Topology {}
        #expect(built.isEmpty)
        #expect(built == Topology())
        #expect(!Topology(queues: [Queue("q")]).isEmpty)
    }

    @Test("The builder is equivalent to the arrays initializer")
    func builderMatchesArrays() {
        let built = Topology {
            Exchange("x")
            Queue("q")
            Binding.queue("q", to: "x")
        }
        let listed = Topology(exchanges: [Exchange("x")], queues: [Queue("q")], bindings: [.queue("q", to: "x")])
        #expect(built == listed)
    }

    @Test("add drops equal duplicates and keeps conflicting ones")
    func add() {
        var topology = Topology()
        topology.add(Exchange("orders", type: .topic))
        topology.add(Exchange("orders", type: .topic))
        topology.add(Queue("q"))
        topology.add(Queue("q"))
        topology.add(Binding.queue("q", to: "orders", routingKey: "k"))
        topology.add(Binding.queue("q", to: "orders", routingKey: "k"))
        #expect(topology.exchanges.count == 1)
        #expect(topology.queues.count == 1)
        #expect(topology.bindings.count == 1)

        topology.add(Exchange("orders", type: .fanout))
        topology.add(Binding.queue("q", to: "orders", routingKey: "other"))
        #expect(topology.exchanges.map(\.type) == [.topic, .fanout])
        #expect(topology.bindings.map(\.routingKey) == ["k", "other"])
    }

    @Test("Server-named queues are never dropped as duplicates")
    func serverNamedQueues() {
        var topology = Topology(queues: [Queue.temporary(), Queue.temporary()])
        topology.add(Queue.temporary())
        #expect(topology.queues.count == 3)
        #expect(throws: Never.self) { try topology.validate() }
    }

    @Test("merging appends the other topology's entries and drops equal duplicates")
    func merging() {
        let base = Topology(
            exchanges: [Exchange("orders", type: .topic)],
            queues: [Queue("a")],
            bindings: [.queue("a", to: "orders", routingKey: "a.#")]
        )
        let extra = Topology(
            exchanges: [Exchange("orders", type: .topic), Exchange("audit", type: .fanout)],
            queues: [Queue("b"), Queue("a")],
            bindings: [.queue("a", to: "orders", routingKey: "a.#"), .exchange("audit", to: "orders")]
        )
        let merged = base.merging(extra)
        #expect(merged.exchanges.map(\.name) == ["orders", "audit"])
        #expect(merged.queues.map(\.name) == ["a", "b"])
        #expect(merged.bindings == [.queue("a", to: "orders", routingKey: "a.#"), .exchange("audit", to: "orders")])
        #expect(base.merging(base) == base)
        #expect(base.merging(Topology()) == base)
        #expect(Topology().merging(base) == base)

        var mutated = base
        mutated.add(extra)
        #expect(mutated == merged)
    }

    @Test("validate reports conflicting duplicates with what differs")
    func conflicts() throws {
        let exchanges = Topology(exchanges: [Exchange("orders", type: .topic), Exchange("orders", type: .direct)])
        let exchangeError = try #require(throws: RabbitMQError.self) { try exchanges.validate() }
        #expect(exchangeError.code == .invalidArgument)
        #expect(exchangeError.operation == "exchange.declare")
        #expect(exchangeError.message.contains("exchange \"orders\" is listed twice with different settings"))
        #expect(exchangeError.message.contains("type topic vs direct"))
        #expect(exchangeError.message.contains("406"))

        let queues = Topology(queues: [
            Queue("jobs", arguments: QueueArguments(type: .quorum)),
            Queue("jobs", arguments: QueueArguments(type: .quorum, maxLength: 10)),
        ])
        let queueError = try #require(throws: RabbitMQError.self) { try queues.validate() }
        #expect(queueError.operation == "queue.declare")
        #expect(queueError.message.contains("queue \"jobs\" is listed twice"))
        #expect(queueError.message.contains("arguments"))

        let flags = Topology(queues: [Queue("q", durable: true), Queue("q", durable: false)])
        let flagError = try #require(throws: RabbitMQError.self) { try flags.validate() }
        #expect(flagError.message.contains("durable true vs false"))

        // Different in form, same declaration: no conflict.
        let equivalent = Topology(exchanges: [
            Exchange("e", alternateExchange: "ae"),
            Exchange("e", arguments: ["alternate-exchange": "ae"]),
        ])
        #expect(equivalent.exchanges.count == 2)
        #expect(throws: Never.self) { try equivalent.validate() }
    }

    @Test("validate checks every entry")
    func entryProblems() throws {
        let reserved = Topology {
            Exchange("orders")
            Queue("amq.mine")
        }
        let reservedError = try #require(throws: RabbitMQError.self) { try reserved.validate() }
        #expect(reservedError.message.contains("reserved prefix"))

        let quorum = Topology {
            Queue("work", exclusive: true, arguments: QueueArguments(type: .quorum))
        }
        let quorumError = try #require(throws: RabbitMQError.self) { try quorum.validate() }
        #expect(quorumError.message.contains("quorum queue \"work\" must be not exclusive"))

        let defaultExchange = Topology {
            Queue("q")
            Binding.queue("q", to: "")
        }
        let bindingError = try #require(throws: RabbitMQError.self) { try defaultExchange.validate() }
        #expect(bindingError.operation == "queue.bind")
    }

    @Test("Bindings may refer to exchanges and queues outside the topology")
    func externalReferences() {
        let topology = Topology {
            Queue("mine")
            Binding.queue("mine", to: "amq.fanout")
            Binding.queue("theirs", to: "shared.events", routingKey: "#")
        }
        #expect(throws: Never.self) { try topology.validate() }
    }
}
