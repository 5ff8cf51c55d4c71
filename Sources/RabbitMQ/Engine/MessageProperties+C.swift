internal import CRabbitMQ
import Foundation

extension CArena {
    /// `properties` as librabbitmq basic properties whose memory lives in the arena.
    func basicProperties(_ properties: MessageProperties) -> amqp_basic_properties_t {
        var c = amqp_basic_properties_t()
        var flags: UInt32 = 0
        func set(_ value: String?, _ flag: Int32, _ field: inout amqp_bytes_t) {
            guard let value else { return }
            field = bytes(value)
            flags |= UInt32(flag)
        }
        set(properties.contentType, AMQP_BASIC_CONTENT_TYPE_FLAG, &c.content_type)
        set(properties.contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG, &c.content_encoding)
        if !properties.headers.isEmpty {
            c.headers = table(properties.headers)
            flags |= UInt32(AMQP_BASIC_HEADERS_FLAG)
        }
        if let mode = properties.deliveryMode {
            c.delivery_mode = mode.rawValue
            flags |= UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG)
        }
        if let priority = properties.priority {
            c.priority = priority
            flags |= UInt32(AMQP_BASIC_PRIORITY_FLAG)
        }
        set(properties.correlationID, AMQP_BASIC_CORRELATION_ID_FLAG, &c.correlation_id)
        set(properties.replyTo, AMQP_BASIC_REPLY_TO_FLAG, &c.reply_to)
        set(properties.expiration.map { String($0.wholeMilliseconds) }, AMQP_BASIC_EXPIRATION_FLAG, &c.expiration)
        set(properties.messageID, AMQP_BASIC_MESSAGE_ID_FLAG, &c.message_id)
        if let timestamp = properties.timestamp {
            c.timestamp = UInt64(max(0, timestamp.timeIntervalSince1970.rounded(.down)))
            flags |= UInt32(AMQP_BASIC_TIMESTAMP_FLAG)
        }
        set(properties.type, AMQP_BASIC_TYPE_FLAG, &c.type)
        set(properties.userID, AMQP_BASIC_USER_ID_FLAG, &c.user_id)
        set(properties.appID, AMQP_BASIC_APP_ID_FLAG, &c.app_id)
        c._flags = flags
        return c
    }
}

extension MessageProperties {
    /// A copy of librabbitmq's decoded basic properties.
    init(_ c: amqp_basic_properties_t) {
        self.init()
        let flags = c._flags
        func has(_ flag: Int32) -> Bool { flags & UInt32(flag) != 0 }
        if has(AMQP_BASIC_CONTENT_TYPE_FLAG) { contentType = c.content_type.string }
        if has(AMQP_BASIC_CONTENT_ENCODING_FLAG) { contentEncoding = c.content_encoding.string }
        if has(AMQP_BASIC_HEADERS_FLAG) { headers = FieldTable(c.headers) }
        if has(AMQP_BASIC_DELIVERY_MODE_FLAG) { deliveryMode = DeliveryMode(rawValue: c.delivery_mode) }
        if has(AMQP_BASIC_PRIORITY_FLAG) { priority = c.priority }
        if has(AMQP_BASIC_CORRELATION_ID_FLAG) { correlationID = c.correlation_id.string }
        if has(AMQP_BASIC_REPLY_TO_FLAG) { replyTo = c.reply_to.string }
        if has(AMQP_BASIC_EXPIRATION_FLAG), let milliseconds = Int64(c.expiration.string) {
            expiration = .milliseconds(milliseconds)
        }
        if has(AMQP_BASIC_MESSAGE_ID_FLAG) { messageID = c.message_id.string }
        if has(AMQP_BASIC_TIMESTAMP_FLAG) { timestamp = Date(timeIntervalSince1970: Double(c.timestamp)) }
        if has(AMQP_BASIC_TYPE_FLAG) { type = c.type.string }
        if has(AMQP_BASIC_USER_ID_FLAG) { userID = c.user_id.string }
        if has(AMQP_BASIC_APP_ID_FLAG) { appID = c.app_id.string }
    }
}

extension Duration {
    /// The duration in whole milliseconds, rounded down.
    var wholeMilliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}
