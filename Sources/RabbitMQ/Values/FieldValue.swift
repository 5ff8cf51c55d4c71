import Foundation

/// A value in an AMQP field table: message headers, queue and exchange arguments, client properties.
///
/// Every AMQP 0-9-1 field type (with RabbitMQ's type codes) has a case, so a table read from the broker
/// round-trips unchanged. Literals make tables easy to write: `["x-max-length": 1000, "region": "eu"]`.
public enum FieldValue: Sendable, Hashable {
    /// `t`: a boolean.
    case bool(Bool)
    /// `b`: a signed 8-bit integer.
    case int8(Int8)
    /// `B`: an unsigned 8-bit integer.
    case uint8(UInt8)
    /// `s`: a signed 16-bit integer.
    case int16(Int16)
    /// `u`: an unsigned 16-bit integer.
    case uint16(UInt16)
    /// `I`: a signed 32-bit integer.
    case int32(Int32)
    /// `i`: an unsigned 32-bit integer.
    case uint32(UInt32)
    /// `l`: a signed 64-bit integer. Integer literals become this case.
    case int64(Int64)
    /// `L`: an unsigned 64-bit integer, as other brokers send it. RabbitMQ reads this type code as signed, so
    /// the library refuses it in tables it sends (``RabbitMQError/Code/invalidArgument``): use ``int64(_:)``.
    case uint64(UInt64)
    /// `f`: a 32-bit float.
    case float(Float)
    /// `d`: a 64-bit float. Float literals become this case.
    case double(Double)
    /// `D`: a decimal with a scale (digits after the point) and an unscaled 32-bit value.
    case decimal(FieldDecimal)
    /// `S`: a UTF-8 string. String literals become this case.
    case string(String)
    /// `x`: raw bytes.
    case bytes([UInt8])
    /// `A`: an array of values.
    case array([FieldValue])
    /// `F`: a nested table.
    case table(FieldTable)
    /// `T`: a timestamp with one-second resolution (AMQP's precision).
    case timestamp(Date)
    /// `V`: no value.
    case void
}

/// An AMQP decimal: `value / 10^scale`.
public struct FieldDecimal: Sendable, Hashable {
    /// Number of decimal digits after the point.
    public var scale: UInt8
    /// The unscaled value.
    public var value: UInt32

    /// Creates a decimal worth `value / 10^scale`.
    public init(scale: UInt8, value: UInt32) {
        self.scale = scale
        self.value = value
    }
}

extension FieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int64(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(arrayLiteral elements: FieldValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, FieldValue)...) {
        self = .table(FieldTable(elements.map { FieldTable.Entry(key: $0.0, value: $0.1) }))
    }
}

extension FieldValue {
    /// The string, when this value is ``string(_:)`` or UTF-8 ``bytes(_:)``.
    public var stringValue: String? {
        switch self {
        case .string(let string): string
        case .bytes(let bytes): String(validating: bytes, as: UTF8.self)
        default: nil
        }
    }

    /// The value as a 64-bit signed integer, when it is an integer of any width that fits.
    public var int64Value: Int64? {
        switch self {
        case .int8(let v): Int64(v)
        case .uint8(let v): Int64(v)
        case .int16(let v): Int64(v)
        case .uint16(let v): Int64(v)
        case .int32(let v): Int64(v)
        case .uint32(let v): Int64(v)
        case .int64(let v): v
        case .uint64(let v): Int64(exactly: v)
        default: nil
        }
    }

    /// The nested table, when this value is ``table(_:)``.
    public var tableValue: FieldTable? {
        if case .table(let table) = self { table } else { nil }
    }

    /// The elements, when this value is ``array(_:)``.
    public var arrayValue: [FieldValue]? {
        if case .array(let array) = self { array } else { nil }
    }
}
