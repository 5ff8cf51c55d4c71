/// The optional `x-` arguments of a queue declaration, typed.
///
/// Every property defaults to unset (`nil`, or `false` for ``singleActiveConsumer``); an unset property is not
/// sent, so the broker's default (or a policy) applies. ``table`` produces the field table to send and
/// ``init(table:)`` reads one back.
///
/// ```swift
/// var arguments = QueueArguments(type: .quorum)
/// arguments.deadLetterExchange = "orders.dead"
/// arguments.deliveryLimit = 5
/// ```
///
/// Arguments without a typed property here go in ``extra``. A typed property that is set wins over the same key
/// in ``extra``; ``validate()`` reports the two when they disagree.
public struct QueueArguments: Sendable, Hashable {
    /// The queue type (`x-queue-type`). Default `nil`: the virtual host's default type, classic unless configured.
    public var type: QueueType?
    /// How long a message may stay in the queue before it expires (`x-message-ttl`, whole milliseconds, rounded
    /// down). From zero to 4294967295 ms (about 49.7 days). Default `nil`: no limit.
    public var messageTTL: Duration?
    /// How long the queue may stay unused (no consumers, no `basic.get`, no redeclaration) before the broker
    /// deletes it (`x-expires`, whole milliseconds, rounded down). From 1 to 4294967295 ms. Default `nil`: never.
    public var expires: Duration?
    /// The most ready messages the queue holds (`x-max-length`); see ``overflow``. Default `nil`: no limit.
    public var maxLength: Int?
    /// The most bytes of ready message bodies the queue holds (`x-max-length-bytes`); see ``overflow``.
    /// Default `nil`: no limit.
    public var maxLengthBytes: Int?
    /// What happens when ``maxLength`` or ``maxLengthBytes`` is reached (`x-overflow`).
    /// Default `nil`: the broker's default, ``OverflowBehavior/dropHead``.
    public var overflow: OverflowBehavior?
    /// The exchange that receives the queue's rejected, expired and dropped messages (`x-dead-letter-exchange`).
    /// The empty string names the default exchange (route by queue name) and is sent. Default `nil`: none.
    public var deadLetterExchange: String?
    /// The routing key dead-lettered messages are published with (`x-dead-letter-routing-key`); requires
    /// ``deadLetterExchange``. Default `nil`: the message's own routing key.
    public var deadLetterRoutingKey: String?
    /// How a quorum queue dead-letters (`x-dead-letter-strategy`): ``DeadLetterStrategy/atLeastOnce`` keeps each
    /// message until its target queues confirm it, and needs ``overflow`` ``OverflowBehavior/rejectPublish``.
    /// Default `nil`: at most once (a message whose target is unavailable, say failing over, is dropped).
    public var deadLetterStrategy: DeadLetterStrategy?
    /// Whether only one consumer at a time receives messages, the others waiting as standbys
    /// (`x-single-active-consumer`, sent only when `true`). Default `false`.
    public var singleActiveConsumer: Bool
    /// How many times a message may be delivered before it is dropped or dead-lettered (`x-delivery-limit`,
    /// quorum queues). Default `nil`: the broker's default (unlimited before RabbitMQ 4.0, 20 since; `-1`
    /// lifts the limit on 4.0 and later).
    public var deliveryLimit: Int?
    /// The highest message priority the queue honours (`x-max-priority`), making it a priority queue; 1 to 10
    /// is recommended. Default `nil`: priorities are ignored.
    public var maxPriority: UInt8?
    /// Further arguments, sent as they are, such as `x-max-age` for streams or `x-queue-leader-locator`.
    /// Default empty. A typed property that is set wins over the same key here.
    public var extra: FieldTable

    /// Creates queue arguments; every argument is optional and unset by default.
    public init(
        type: QueueType? = nil,
        messageTTL: Duration? = nil,
        expires: Duration? = nil,
        maxLength: Int? = nil,
        maxLengthBytes: Int? = nil,
        overflow: OverflowBehavior? = nil,
        deadLetterExchange: String? = nil,
        deadLetterRoutingKey: String? = nil,
        deadLetterStrategy: DeadLetterStrategy? = nil,
        singleActiveConsumer: Bool = false,
        deliveryLimit: Int? = nil,
        maxPriority: UInt8? = nil,
        extra: FieldTable = [:]
    ) {
        self.type = type
        self.messageTTL = messageTTL
        self.expires = expires
        self.maxLength = maxLength
        self.maxLengthBytes = maxLengthBytes
        self.overflow = overflow
        self.deadLetterExchange = deadLetterExchange
        self.deadLetterRoutingKey = deadLetterRoutingKey
        self.deadLetterStrategy = deadLetterStrategy
        self.singleActiveConsumer = singleActiveConsumer
        self.deliveryLimit = deliveryLimit
        self.maxPriority = maxPriority
        self.extra = extra
    }

    /// Reads arguments from a field table, such as one built by hand or by ``table``.
    ///
    /// Each known key whose value has a usable type (any integer width for numbers, a string for names and
    /// types, a boolean for `x-single-active-consumer`) sets its typed property; every other entry, including a
    /// known key with a value of another type or out of range, is kept in ``extra`` so it is still sent.
    public init(table: FieldTable) {
        self.init()
        for entry in table.entries where !assign(entry.key, entry.value) {
            extra[entry.key] = entry.value
        }
    }

    /// The arguments as the field table sent with `queue.declare`: typed properties first, in declaration order,
    /// then the entries of ``extra`` whose keys no typed property set. Integers and milliseconds are `.int64`,
    /// names and enumerations `.string`, ``singleActiveConsumer`` `.bool(true)`.
    public var table: FieldTable {
        var table = typedTable
        for entry in extra.entries where table[entry.key] == nil {
            table[entry.key] = entry.value
        }
        return table
    }

    /// The queue type that will be sent: ``type``, or else a string `x-queue-type` in ``extra``.
    var effectiveType: QueueType? {
        type ?? extra[Key.type]?.stringValue.map(QueueType.init(rawValue:))
    }

    /// Whether no argument is set: ``table`` is empty.
    public var isEmpty: Bool { typedTable.isEmpty && extra.isEmpty }

    /// Checks what the broker would refuse, without contacting it.
    ///
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` (operation `queue.declare`) when a duration is negative or
    ///   longer than 4294967295 ms, ``expires`` is under 1 ms, ``maxLength`` or ``maxLengthBytes`` is negative,
    ///   ``deadLetterRoutingKey`` is set without ``deadLetterExchange``, a name or an ``extra`` key is too long,
    ///   or a typed property and the same key in ``extra`` disagree.
    public func validate() throws(RabbitMQError) {
        let operation = "queue.declare"
        if let messageTTL {
            try Self.checkMilliseconds(messageTTL, key: Key.messageTTL, minimum: 0, operation: operation)
        }
        if let expires {
            try Self.checkMilliseconds(expires, key: Key.expires, minimum: 1, operation: operation)
        }
        for (value, key) in [(maxLength, Key.maxLength), (maxLengthBytes, Key.maxLengthBytes)] {
            if let value, value < 0 {
                throw RabbitMQError(
                    .invalidArgument, "\(key) is \(value); it must not be negative", operation: operation)
            }
        }
        if let deadLetterExchange {
            try NameValidation.validate(deadLetterExchange, as: "dead-letter exchange name", operation: operation)
        }
        if let deadLetterRoutingKey {
            try NameValidation.validate(deadLetterRoutingKey, as: "dead-letter routing key", operation: operation)
            if deadLetterExchange == nil && extra[Key.deadLetterExchange] == nil {
                throw RabbitMQError(
                    .invalidArgument,
                    "deadLetterRoutingKey is set without deadLetterExchange; the broker refuses it "
                        + "(set deadLetterExchange to \"\" for the default exchange)",
                    operation: operation
                )
            }
        }
        if let type {
            try NameValidation.validate(type.rawValue, as: "queue type", operation: operation)
        }
        if let overflow {
            try NameValidation.validate(overflow.rawValue, as: "overflow behavior", operation: operation)
        }
        let typed = typedTable
        for entry in extra.entries {
            if let typedValue = typed[entry.key], !Self.equivalent(typedValue, entry.value) {
                throw RabbitMQError(
                    .invalidArgument,
                    "\(entry.key) is set both by a typed property (\(typedValue)) and in extra (\(entry.value)); "
                        + "remove one",
                    operation: operation
                )
            }
        }
        try NameValidation.validate(extra, as: "queue arguments", operation: operation)
    }

    // MARK: - Encoding and decoding

    /// The largest time to live or expiry, in milliseconds, the broker accepts (its timers' limit).
    static let maxMilliseconds: Int64 = 4_294_967_295

    /// The argument keys of the typed properties.
    enum Key {
        static let type = "x-queue-type"
        static let messageTTL = "x-message-ttl"
        static let expires = "x-expires"
        static let maxLength = "x-max-length"
        static let maxLengthBytes = "x-max-length-bytes"
        static let overflow = "x-overflow"
        static let deadLetterExchange = "x-dead-letter-exchange"
        static let deadLetterRoutingKey = "x-dead-letter-routing-key"
        static let deadLetterStrategy = "x-dead-letter-strategy"
        static let singleActiveConsumer = "x-single-active-consumer"
        static let deliveryLimit = "x-delivery-limit"
        static let maxPriority = "x-max-priority"
    }

    /// The typed properties that are set, as table entries, in declaration order.
    private var typedTable: FieldTable {
        var table = FieldTable()
        if let type { table[Key.type] = .string(type.rawValue) }
        if let messageTTL { table[Key.messageTTL] = .int64(Self.milliseconds(messageTTL)) }
        if let expires { table[Key.expires] = .int64(Self.milliseconds(expires)) }
        if let maxLength { table[Key.maxLength] = .int64(Int64(maxLength)) }
        if let maxLengthBytes { table[Key.maxLengthBytes] = .int64(Int64(maxLengthBytes)) }
        if let overflow { table[Key.overflow] = .string(overflow.rawValue) }
        if let deadLetterExchange { table[Key.deadLetterExchange] = .string(deadLetterExchange) }
        if let deadLetterRoutingKey { table[Key.deadLetterRoutingKey] = .string(deadLetterRoutingKey) }
        if let deadLetterStrategy { table[Key.deadLetterStrategy] = .string(deadLetterStrategy.rawValue) }
        if singleActiveConsumer { table[Key.singleActiveConsumer] = .bool(true) }
        if let deliveryLimit { table[Key.deliveryLimit] = .int64(Int64(deliveryLimit)) }
        if let maxPriority { table[Key.maxPriority] = .int64(Int64(maxPriority)) }
        return table
    }

    /// Sets the typed property for `key` from `value`; `false` when the key is not typed or the value unusable.
    private mutating func assign(_ key: String, _ value: FieldValue) -> Bool {
        switch key {
        case Key.type:
            guard let string = value.stringValue else { return false }
            type = QueueType(rawValue: string)
        case Key.messageTTL:
            guard let milliseconds = value.int64Value else { return false }
            messageTTL = .milliseconds(milliseconds)
        case Key.expires:
            guard let milliseconds = value.int64Value else { return false }
            expires = .milliseconds(milliseconds)
        case Key.maxLength:
            guard let count = value.int64Value.flatMap({ Int(exactly: $0) }) else { return false }
            maxLength = count
        case Key.maxLengthBytes:
            guard let count = value.int64Value.flatMap({ Int(exactly: $0) }) else { return false }
            maxLengthBytes = count
        case Key.overflow:
            guard let string = value.stringValue else { return false }
            overflow = OverflowBehavior(rawValue: string)
        case Key.deadLetterExchange:
            guard let string = value.stringValue else { return false }
            deadLetterExchange = string
        case Key.deadLetterRoutingKey:
            guard let string = value.stringValue else { return false }
            deadLetterRoutingKey = string
        case Key.deadLetterStrategy:
            guard let string = value.stringValue else { return false }
            deadLetterStrategy = DeadLetterStrategy(rawValue: string)
        case Key.singleActiveConsumer:
            guard case .bool(let flag) = value else { return false }
            singleActiveConsumer = flag
        case Key.deliveryLimit:
            guard let limit = value.int64Value.flatMap({ Int(exactly: $0) }) else { return false }
            deliveryLimit = limit
        case Key.maxPriority:
            guard let priority = value.int64Value.flatMap({ UInt8(exactly: $0) }) else { return false }
            maxPriority = priority
        default:
            return false
        }
        return true
    }

    /// Whether two argument values mean the same to the broker: equal, or the same integer or string in another
    /// encoding (`.int32(5)` and `.int64(5)`).
    private static func equivalent(_ first: FieldValue, _ second: FieldValue) -> Bool {
        if first == second { return true }
        if let a = first.int64Value, let b = second.int64Value { return a == b }
        if let a = first.stringValue, let b = second.stringValue { return a == b }
        return false
    }

    /// `duration` in whole milliseconds, rounded toward zero, clamped to the range of `Int64`.
    static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return seconds < 0 ? .min : .max }
        let (total, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return total
    }

    private static func checkMilliseconds(
        _ duration: Duration, key: String, minimum: Int64, operation: String
    ) throws(RabbitMQError) {
        let milliseconds = milliseconds(duration)
        guard milliseconds >= minimum, milliseconds <= maxMilliseconds else {
            throw RabbitMQError(
                .invalidArgument,
                "\(key) is \(duration) (\(milliseconds) ms in whole milliseconds); "
                    + "it must be from \(minimum) to \(maxMilliseconds) ms",
                operation: operation
            )
        }
    }
}
