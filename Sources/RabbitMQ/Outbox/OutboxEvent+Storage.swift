import Foundation

extension OutboxEvent {
    /// The event's ``properties`` as bytes (JSON), for an ``OutboxStore`` to keep in a column; every property and
    /// header value survives ``decodeProperties(_:)``.
    public func encodedProperties() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "+inf", negativeInfinity: "-inf", nan: "nan")
        return try encoder.encode(StoredProperties(properties))
    }

    /// The properties ``encodedProperties()`` wrote.
    /// - Throws: a `DecodingError` for bytes it did not write.
    public static func decodeProperties(_ data: Data) throws -> MessageProperties {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "+inf", negativeInfinity: "-inf", nan: "nan")
        return try decoder.decode(StoredProperties.self, from: data).properties
    }
}

/// ``MessageProperties`` in a `Codable` form, for outbox stores.
private struct StoredProperties: Codable {
    var contentType: String?
    var contentEncoding: String?
    var headers: [StoredEntry]
    var deliveryMode: UInt8?
    var priority: UInt8?
    var correlationID: String?
    var replyTo: String?
    var expiration: Duration?
    var messageID: String?
    var timestamp: Double?
    var type: String?
    var userID: String?
    var appID: String?

    init(_ properties: MessageProperties) {
        contentType = properties.contentType
        contentEncoding = properties.contentEncoding
        headers = properties.headers.entries.map { StoredEntry(key: $0.key, value: StoredValue($0.value)) }
        deliveryMode = properties.deliveryMode?.rawValue
        priority = properties.priority
        correlationID = properties.correlationID
        replyTo = properties.replyTo
        expiration = properties.expiration
        messageID = properties.messageID
        timestamp = properties.timestamp?.timeIntervalSince1970
        type = properties.type
        userID = properties.userID
        appID = properties.appID
    }

    var properties: MessageProperties {
        MessageProperties(
            contentType: contentType, contentEncoding: contentEncoding,
            headers: FieldTable(headers.map { FieldTable.Entry(key: $0.key, value: $0.value.fieldValue) }),
            deliveryMode: deliveryMode.flatMap(DeliveryMode.init(rawValue:)), priority: priority,
            correlationID: correlationID, replyTo: replyTo, expiration: expiration, messageID: messageID,
            timestamp: timestamp.map(Date.init(timeIntervalSince1970:)), type: type, userID: userID, appID: appID)
    }
}

private struct StoredEntry: Codable {
    var key: String
    var value: StoredValue
}

/// ``FieldValue`` in a `Codable` form.
private indirect enum StoredValue: Codable {
    case bool(Bool)
    case int8(Int8)
    case uint8(UInt8)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case uint64(UInt64)
    case float(Float)
    case double(Double)
    case decimal(scale: UInt8, value: UInt32)
    case string(String)
    case bytes([UInt8])
    case array([StoredValue])
    case table([StoredEntry])
    case timestamp(Double)
    case void

    init(_ value: FieldValue) {
        switch value {
        case .bool(let v): self = .bool(v)
        case .int8(let v): self = .int8(v)
        case .uint8(let v): self = .uint8(v)
        case .int16(let v): self = .int16(v)
        case .uint16(let v): self = .uint16(v)
        case .int32(let v): self = .int32(v)
        case .uint32(let v): self = .uint32(v)
        case .int64(let v): self = .int64(v)
        case .uint64(let v): self = .uint64(v)
        case .float(let v): self = .float(v)
        case .double(let v): self = .double(v)
        case .decimal(let v): self = .decimal(scale: v.scale, value: v.value)
        case .string(let v): self = .string(v)
        case .bytes(let v): self = .bytes(v)
        case .array(let v): self = .array(v.map(StoredValue.init))
        case .table(let v): self = .table(v.entries.map { StoredEntry(key: $0.key, value: StoredValue($0.value)) })
        case .timestamp(let v): self = .timestamp(v.timeIntervalSince1970)
        case .void: self = .void
        }
    }

    var fieldValue: FieldValue {
        switch self {
        case .bool(let v): .bool(v)
        case .int8(let v): .int8(v)
        case .uint8(let v): .uint8(v)
        case .int16(let v): .int16(v)
        case .uint16(let v): .uint16(v)
        case .int32(let v): .int32(v)
        case .uint32(let v): .uint32(v)
        case .int64(let v): .int64(v)
        case .uint64(let v): .uint64(v)
        case .float(let v): .float(v)
        case .double(let v): .double(v)
        case .decimal(let scale, let value): .decimal(FieldDecimal(scale: scale, value: value))
        case .string(let v): .string(v)
        case .bytes(let v): .bytes(v)
        case .array(let v): .array(v.map(\.fieldValue))
        case .table(let v): .table(FieldTable(v.map { FieldTable.Entry(key: $0.key, value: $0.value.fieldValue) }))
        case .timestamp(let v): .timestamp(Date(timeIntervalSince1970: v))
        case .void: .void
        }
    }
}
