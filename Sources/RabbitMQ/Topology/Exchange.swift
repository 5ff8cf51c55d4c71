/// An exchange to declare: where publishers send messages, and what routes them to queues and other exchanges.
///
/// ```swift
/// let orders = Exchange("orders", type: .topic, alternateExchange: "orders.unroutable")
/// ```
///
/// Declaring an exchange that exists with the same settings does nothing; with different settings, the broker
/// refuses with 406 PRECONDITION_FAILED and closes the channel.
public struct Exchange: Sendable, Hashable {
    /// The exchange's name: at most 255 bytes of UTF-8, not empty (the default exchange cannot be declared), not
    /// starting with `amq.` (reserved by the broker).
    public var name: String
    /// How the exchange routes messages. Default ``ExchangeType/direct``.
    public var type: ExchangeType
    /// Whether the exchange survives a broker restart. Default `true`.
    public var durable: Bool
    /// Whether the broker deletes the exchange when its last binding (as a source) is removed. Default `false`.
    public var autoDelete: Bool
    /// Whether only other exchanges may route to this one; publishing to it directly is refused with 403.
    /// Sent as the `internal` flag of `exchange.declare`. Default `false`.
    public var isInternal: Bool
    /// The exchange that receives the messages this one cannot route (sent as `alternate-exchange`).
    /// Default `nil`.
    public var alternateExchange: String?
    /// Further declare arguments, sent as they are, for arguments without a typed property here (such as
    /// `x-delayed-type` for the delayed-message plugin). Default empty.
    ///
    /// A typed property that is set (``alternateExchange``) wins over the same key here; ``validate()`` reports
    /// the two when they disagree.
    public var arguments: FieldTable

    /// Creates an exchange description.
    ///
    /// - Parameters:
    ///   - name: The exchange's name.
    ///   - type: How it routes. Default ``ExchangeType/direct``.
    ///   - durable: Whether it survives a broker restart. Default `true`.
    ///   - autoDelete: Whether it is deleted with its last binding. Default `false`.
    ///   - isInternal: Whether publishers may not send to it directly. Default `false`.
    ///   - alternateExchange: Where unroutable messages go. Default `nil`.
    ///   - arguments: Further declare arguments. Default empty.
    public init(
        _ name: String,
        type: ExchangeType = .direct,
        durable: Bool = true,
        autoDelete: Bool = false,
        isInternal: Bool = false,
        alternateExchange: String? = nil,
        arguments: FieldTable = [:]
    ) {
        self.name = name
        self.type = type
        self.durable = durable
        self.autoDelete = autoDelete
        self.isInternal = isInternal
        self.alternateExchange = alternateExchange
        self.arguments = arguments
    }

    /// The argument table to send with `exchange.declare`: ``arguments`` with the typed properties set on top
    /// (`alternate-exchange` as a string).
    public var declareArguments: FieldTable {
        var table = arguments
        if let alternateExchange { table[ArgumentKey.alternateExchange] = .string(alternateExchange) }
        return table
    }

    /// Checks what the broker would refuse, without contacting it.
    ///
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` (operation `exchange.declare`) when the name is empty,
    ///   starts with `amq.`, is longer than 255 bytes or contains CR or LF; when the type or the alternate
    ///   exchange's name is empty or too long; when an argument key is longer than 128 bytes; or when
    ///   ``alternateExchange`` and `arguments["alternate-exchange"]` disagree.
    public func validate() throws(RabbitMQError) {
        let operation = "exchange.declare"
        guard !name.isEmpty else {
            throw RabbitMQError(
                .invalidArgument, "the default exchange (empty name) cannot be declared", operation: operation)
        }
        try NameValidation.validateEntityName(name, as: "exchange name", operation: operation)
        if name.hasPrefix(Self.reservedPrefix) {
            throw RabbitMQError(
                .invalidArgument,
                "exchange name \(NameValidation.quoted(name)) starts with the reserved prefix \"amq.\"; "
                    + "the broker refuses to create it (403), and a built-in exchange such as amq.topic "
                    + "can be bound to without being declared",
                operation: operation
            )
        }
        guard !type.rawValue.isEmpty else {
            throw RabbitMQError(
                .invalidArgument, "exchange \(NameValidation.quoted(name)) has an empty type", operation: operation)
        }
        try NameValidation.validate(type.rawValue, as: "exchange type", operation: operation)
        if let alternateExchange {
            try NameValidation.validate(alternateExchange, as: "alternate exchange name", operation: operation)
            if let raw = arguments[ArgumentKey.alternateExchange], raw != .string(alternateExchange) {
                throw RabbitMQError(
                    .invalidArgument,
                    "exchange \(NameValidation.quoted(name)) sets alternateExchange to "
                        + "\(NameValidation.quoted(alternateExchange)) and arguments[\"alternate-exchange\"] to "
                        + "\(raw); remove one",
                    operation: operation
                )
            }
        }
        try NameValidation.validate(arguments, as: "exchange arguments", operation: operation)
    }

    /// Names starting with this are reserved by the broker.
    static let reservedPrefix = "amq."

    enum ArgumentKey {
        static let alternateExchange = "alternate-exchange"
    }
}

/// How an exchange routes messages: one of the four AMQP types, or a type a broker plugin adds.
///
/// Extensible: `ExchangeType(rawValue: "x-delayed-message")` names the delayed-message plugin's type, and a
/// string literal works too.
public struct ExchangeType: RawRepresentable, Sendable, Hashable, ExpressibleByStringLiteral,
    CustomStringConvertible
{
    /// The type's name as the broker knows it, such as `topic`.
    public var rawValue: String

    /// Creates a type from its name, such as `x-delayed-message` or `x-consistent-hash`.
    public init(rawValue: String) { self.rawValue = rawValue }

    /// Creates a type from a string literal.
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { rawValue }

    /// Routes to the bindings whose key equals the routing key.
    public static let direct = ExchangeType(rawValue: "direct")
    /// Routes to every binding, ignoring the routing key.
    public static let fanout = ExchangeType(rawValue: "fanout")
    /// Routes to the bindings whose pattern (`*` one word, `#` zero or more words) matches the routing key.
    public static let topic = ExchangeType(rawValue: "topic")
    /// Routes by message headers, matched against the binding's arguments (`x-match` `all` or `any`).
    public static let headers = ExchangeType(rawValue: "headers")
}
