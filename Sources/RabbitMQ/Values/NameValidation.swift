/// Checks names and tables against the limits of the AMQP 0-9-1 wire format before anything is sent.
///
/// AMQP carries exchange names, queue names, routing keys and consumer tags as *short strings*: a length byte
/// followed by at most 255 bytes of UTF-8. Field-table keys are short strings too, limited to 128 bytes by the
/// grammar. A longer value cannot be encoded at all, so it is refused here with
/// ``RabbitMQError/Code/invalidArgument`` and a message naming what was too long and by how much.
enum NameValidation {
    /// Most bytes of UTF-8 in an AMQP short string (names, routing keys, consumer tags).
    static let maxShortStringBytes = 255
    /// Most bytes of UTF-8 in a field-table key.
    static let maxTableKeyBytes = 128
    /// Characters of a rejected name quoted in an error message.
    private static let quotedPrefixLength = 40

    /// Checks that `name` fits in an AMQP short string.
    ///
    /// - Parameters:
    ///   - name: The name, routing key or tag to check. Empty is allowed.
    ///   - what: What the string is, for the message, such as `queue name` or `routing key`.
    ///   - operation: The operation to name in the error, such as `queue.declare`.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` when `name` has more than 255 bytes of UTF-8.
    static func validate(_ name: String, as what: String, operation: String? = nil) throws(RabbitMQError) {
        let bytes = name.utf8.count
        guard bytes <= maxShortStringBytes else {
            throw RabbitMQError(
                .invalidArgument,
                "\(what) \(quoted(name)) is \(bytes) bytes of UTF-8; at most \(maxShortStringBytes) are allowed",
                operation: operation
            )
        }
    }

    /// Checks the name of an exchange or queue to be declared: a short string without CR or LF.
    ///
    /// RabbitMQ strips carriage returns and line feeds from the names it creates, so a name containing them would
    /// be declared under a different name than the one later used to bind, publish or consume.
    ///
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` when the name is too long or contains CR or LF.
    static func validateEntityName(_ name: String, as what: String, operation: String? = nil) throws(RabbitMQError) {
        try validate(name, as: what, operation: operation)
        if name.utf8.contains(where: { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }) {
            throw RabbitMQError(
                .invalidArgument,
                "\(what) \(quoted(name)) contains a carriage return or line feed, which RabbitMQ strips",
                operation: operation
            )
        }
    }

    /// Checks that `key` fits in a field-table key (at most 128 bytes of UTF-8).
    ///
    /// - Parameters:
    ///   - key: The key to check.
    ///   - what: The table the key belongs to, for the message, such as `queue arguments`.
    ///   - operation: The operation to name in the error.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` when `key` has more than 128 bytes of UTF-8.
    static func validateTableKey(_ key: String, in what: String, operation: String? = nil) throws(RabbitMQError) {
        let bytes = key.utf8.count
        guard bytes <= maxTableKeyBytes else {
            throw RabbitMQError(
                .invalidArgument,
                "key \(quoted(key)) in \(what) is \(bytes) bytes of UTF-8; at most \(maxTableKeyBytes) are allowed",
                operation: operation
            )
        }
    }

    /// Checks every key of `table`, and of the tables nested in it (directly or inside arrays), recursively.
    ///
    /// Values are not checked: which types the broker accepts for which argument is left to the code that knows it.
    ///
    /// - Parameters:
    ///   - table: The table to check.
    ///   - what: What the table is, for the message, such as `message headers`.
    ///   - operation: The operation to name in the error.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` for the first key longer than 128 bytes; the message gives
    ///   its path, such as `queue arguments["outer"][2]`.
    static func validate(_ table: FieldTable, as what: String, operation: String? = nil) throws(RabbitMQError) {
        for entry in table.entries {
            try validateTableKey(entry.key, in: what, operation: operation)
            try validate(entry.value, at: "\(what)[\(quoted(entry.key))]", operation: operation)
        }
    }

    private static func validate(_ value: FieldValue, at path: String, operation: String?) throws(RabbitMQError) {
        switch value {
        case .table(let nested):
            try validate(nested, as: path, operation: operation)
        case .array(let elements):
            for (index, element) in elements.enumerated() {
                try validate(element, at: "\(path)[\(index)]", operation: operation)
            }
        case .uint64:
            // RabbitMQ parses the `L` type code as a signed integer: values above Int64.max would come back
            // negative wherever the broker rewrites the table (dead-lettering, stored arguments).
            throw RabbitMQError(.invalidArgument, "\(path) is a .uint64, which RabbitMQ reads as signed; "
                                    + "use .int64 (or .string for values above Int64.max)", operation: operation)
        default:
            break
        }
    }

    /// The string in quotes, shortened to its first characters when it is long.
    static func quoted(_ text: String) -> String {
        if text.count <= quotedPrefixLength { return "\"\(text)\"" }
        return "\"\(text.prefix(quotedPrefixLength))…\""
    }
}
