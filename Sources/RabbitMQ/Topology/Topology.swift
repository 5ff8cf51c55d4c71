/// A set of exchanges, queues and bindings an application needs, declared together (and declared again after a
/// reconnection).
///
/// Build one with the initializer's arrays, with `add(_:)`, or with a builder:
/// ```swift
/// let topology = Topology {
///     Exchange("orders", type: .topic)
///     Queue("orders.coupon", arguments: QueueArguments(type: .quorum))
///     Binding.queue("orders.coupon", to: "orders", routingKey: "order.placed")
///     if auditing {
///         Exchange("audit", type: .fanout)
///         Binding.exchange("audit", to: "orders", routingKey: "#")
///     }
/// }
/// try topology.validate()
/// ```
///
/// **Declaring order.** The exchanges are declared first, then the queues, then the bindings, each group in the
/// order its entries were added, so every binding comes after the exchanges and queues it may refer to.
///
/// **Duplicates.** Adding an entry equal to one already present does nothing (except for server-named queues:
/// each declares a new queue, so each is kept). An exchange or a named queue added again with the same name but
/// different settings is kept next to the first, and ``validate()`` reports the conflict, since the broker would
/// refuse the second declaration with 406 PRECONDITION_FAILED.
public struct Topology: Sendable, Hashable {
    /// The exchanges, declared first, in this order.
    public private(set) var exchanges: [Exchange]
    /// The queues, declared after the exchanges, in this order.
    public private(set) var queues: [Queue]
    /// The bindings, declared last, in this order.
    public private(set) var bindings: [Binding]

    /// Creates a topology; equal duplicates in each array are dropped. Every array defaults to empty.
    public init(exchanges: [Exchange] = [], queues: [Queue] = [], bindings: [Binding] = []) {
        self.exchanges = []
        self.queues = []
        self.bindings = []
        for exchange in exchanges { add(exchange) }
        for queue in queues { add(queue) }
        for binding in bindings { add(binding) }
    }

    /// Creates a topology from a builder listing exchanges, queues, bindings, arrays and optionals of them, and
    /// nested topologies, with `if`, `switch` and `for` allowed.
    ///
    /// - Parameter content: The entries, in order.
    public init(@TopologyBuilder _ content: () -> Topology) {
        self = content()
    }

    /// Whether the topology has no exchange, queue or binding.
    public var isEmpty: Bool { exchanges.isEmpty && queues.isEmpty && bindings.isEmpty }

    /// Adds an exchange, unless an equal one is already present.
    public mutating func add(_ exchange: Exchange) {
        if !exchanges.contains(exchange) { exchanges.append(exchange) }
    }

    /// Adds a queue, unless an equal one is already present. A server-named queue is always added.
    public mutating func add(_ queue: Queue) {
        if queue.isServerNamed || !queues.contains(queue) { queues.append(queue) }
    }

    /// Adds a binding, unless an equal one is already present.
    public mutating func add(_ binding: Binding) {
        if !bindings.contains(binding) { bindings.append(binding) }
    }

    /// Adds every entry of `other` after this topology's own, with the same duplicate rules as the other `add`s.
    public mutating func add(_ other: Topology) {
        for exchange in other.exchanges { add(exchange) }
        for queue in other.queues { add(queue) }
        for binding in other.bindings { add(binding) }
    }

    /// This topology followed by the entries of `other`; equal duplicates are dropped, conflicting ones kept for
    /// ``validate()`` to report.
    public func merging(_ other: Topology) -> Topology {
        var merged = self
        merged.add(other)
        return merged
    }

    /// Checks every entry, then the entries against each other, without contacting the broker.
    ///
    /// A binding may refer to an exchange or queue that is not in the topology: it may exist already.
    ///
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` for the first problem found: first an entry whose own
    ///   `validate()` fails (``Exchange/validate()``, ``Queue/validate()``, ``Binding/validate()``), checked in
    ///   declaring order; then an exchange or named queue listed twice with different settings.
    public func validate() throws(RabbitMQError) {
        for exchange in exchanges { try exchange.validate() }
        for queue in queues { try queue.validate() }
        for binding in bindings { try binding.validate() }

        for (index, exchange) in exchanges.enumerated() {
            for earlier in exchanges[..<index] where earlier.name == exchange.name {
                let differences = Self.differences(earlier, exchange)
                if !differences.isEmpty {
                    throw Self.conflict("exchange", exchange.name, differences, operation: "exchange.declare")
                }
            }
        }
        for (index, queue) in queues.enumerated() where !queue.isServerNamed {
            for earlier in queues[..<index] where earlier.name == queue.name {
                let differences = Self.differences(earlier, queue)
                if !differences.isEmpty {
                    throw Self.conflict("queue", queue.name, differences, operation: "queue.declare")
                }
            }
        }
    }

    // MARK: - Conflicts

    private static func differences(_ first: Exchange, _ second: Exchange) -> [String] {
        var differences: [String] = []
        if first.type != second.type { differences.append("type \(first.type) vs \(second.type)") }
        if first.durable != second.durable { differences.append("durable \(first.durable) vs \(second.durable)") }
        if first.autoDelete != second.autoDelete {
            differences.append("autoDelete \(first.autoDelete) vs \(second.autoDelete)")
        }
        if first.isInternal != second.isInternal {
            differences.append("isInternal \(first.isInternal) vs \(second.isInternal)")
        }
        if first.declareArguments != second.declareArguments { differences.append("arguments") }
        return differences
    }

    private static func differences(_ first: Queue, _ second: Queue) -> [String] {
        var differences: [String] = []
        if first.durable != second.durable { differences.append("durable \(first.durable) vs \(second.durable)") }
        if first.exclusive != second.exclusive {
            differences.append("exclusive \(first.exclusive) vs \(second.exclusive)")
        }
        if first.autoDelete != second.autoDelete {
            differences.append("autoDelete \(first.autoDelete) vs \(second.autoDelete)")
        }
        if first.declareArguments != second.declareArguments { differences.append("arguments") }
        return differences
    }

    private static func conflict(
        _ kind: String, _ name: String, _ differences: [String], operation: String
    ) -> RabbitMQError {
        RabbitMQError(
            .invalidArgument,
            "\(kind) \(NameValidation.quoted(name)) is listed twice with different settings "
                + "(\(differences.joined(separator: ", "))); the broker would refuse the second declaration "
                + "with 406 PRECONDITION_FAILED",
            operation: operation
        )
    }
}

/// Builds a ``Topology`` from a list of exchanges, queues and bindings; see ``Topology/init(_:)``.
///
/// Accepts ``Exchange``, ``Queue``, ``Binding``, arrays and optionals of each, and ``Topology`` values, with
/// `if`, `if let`, `switch` and `for`. Entries keep their order within each kind, and duplicates follow
/// ``Topology``'s rules.
@resultBuilder
public enum TopologyBuilder {
    /// An exchange.
    public static func buildExpression(_ exchange: Exchange) -> Topology { Topology(exchanges: [exchange]) }
    /// A queue.
    public static func buildExpression(_ queue: Queue) -> Topology { Topology(queues: [queue]) }
    /// A binding.
    public static func buildExpression(_ binding: Binding) -> Topology { Topology(bindings: [binding]) }
    /// Exchanges.
    public static func buildExpression(_ exchanges: [Exchange]) -> Topology { Topology(exchanges: exchanges) }
    /// Queues.
    public static func buildExpression(_ queues: [Queue]) -> Topology { Topology(queues: queues) }
    /// Bindings.
    public static func buildExpression(_ bindings: [Binding]) -> Topology { Topology(bindings: bindings) }
    /// An exchange or nothing.
    public static func buildExpression(_ exchange: Exchange?) -> Topology {
        Topology(exchanges: exchange.map { [$0] } ?? [])
    }
    /// A queue or nothing.
    public static func buildExpression(_ queue: Queue?) -> Topology { Topology(queues: queue.map { [$0] } ?? []) }
    /// A binding or nothing.
    public static func buildExpression(_ binding: Binding?) -> Topology {
        Topology(bindings: binding.map { [$0] } ?? [])
    }
    /// A nested topology.
    public static func buildExpression(_ topology: Topology) -> Topology { topology }

    /// The parts, merged in order.
    public static func buildBlock(_ parts: Topology...) -> Topology { merge(parts) }
    /// The body of an `if` without `else`, or nothing.
    public static func buildOptional(_ part: Topology?) -> Topology { part ?? Topology() }
    /// The first branch of an `if`-`else` or `switch`.
    public static func buildEither(first part: Topology) -> Topology { part }
    /// The second branch of an `if`-`else` or `switch`.
    public static func buildEither(second part: Topology) -> Topology { part }
    /// The bodies of a `for` loop, merged in order.
    public static func buildArray(_ parts: [Topology]) -> Topology { merge(parts) }
    /// The body of an `if #available`.
    public static func buildLimitedAvailability(_ part: Topology) -> Topology { part }

    private static func merge(_ parts: [Topology]) -> Topology {
        var topology = Topology()
        for part in parts { topology.add(part) }
        return topology
    }
}
