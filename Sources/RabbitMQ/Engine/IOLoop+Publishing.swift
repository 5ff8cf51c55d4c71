import Foundation
internal import CRabbitMQ

extension IOLoop {
    /// Writes a publish the machine decided to send on `channel`, then tells the machine how it went.
    /// - Parameter sequence: its number when the channel has confirms: a mandatory publish carries it in a header.
    func write(_ publish: OutgoingPublish, channel: UInt16, sequence: UInt64?) {
        let message = publish.message
        var properties: amqp_basic_properties_t
        if message.mandatory, let sequence {
            // A basic.return names no publish: the sequence number in a header says which one came back.
            var stamped = message.properties
            stamped.headers[OutgoingMessage.publishSequenceHeader] = .int64(Int64(sequence))
            properties = arena.basicProperties(stamped)
        } else {
            properties = arena.basicProperties(message.properties)
        }
        defer { arena.reset() }
        switch send(message, properties: &properties, on: channel) {
        case .sent:
            machine.published(publish, on: channel)
        case .propertiesTooLarge:
            machine.publishRefused(publish, on: channel, RabbitMQError(
                .messageTooLarge, "the message's properties and headers take more than a frame "
                    + "(frame_max \(negotiated.frameMax) bytes)", operation: "basic.publish"))
            return
        case .failed(let error):
            publish.ticket.complete(.failure(error))
            fail(error)
            return
        }
        if writer?.shouldFlush == true { flushWrites() }
    }

    private enum SendOutcome {
        case sent
        /// The properties (headers, in practice) do not fit in a frame; nothing was sent.
        case propertiesTooLarge
        /// The socket failed: the connection is lost.
        case failed(RabbitMQError)
    }

    /// Hands the frames of a publish to the frame writer, or to librabbitmq over TLS.
    private func send(_ message: OutgoingMessage, properties: inout amqp_basic_properties_t,
                      on channel: UInt16) -> SendOutcome {
        if let writer {
            let outcome = message.body.withUnsafeBytes { body in
                Result { () throws(RabbitMQError) in
                    try writer.publish(channel: channel, exchange: message.exchange,
                                       routingKey: message.routingKey, mandatory: message.mandatory,
                                       properties: &properties, body: body, timeout: writeTimeout)
                }
            }
            switch outcome {
            case .success(true): return .sent
            case .success(false): return .propertiesTooLarge
            case .failure(let error): return .failed(error)
            }
        }
        // librabbitmq would fail the whole connection on properties larger than a frame: check first.
        guard propertiesFitInAFrame(&properties) else { return .propertiesTooLarge }
        let status = message.body.withUnsafeBytes { body in
            amqp_basic_publish(connection, channel, arena.bytes(message.exchange),
                               arena.bytes(message.routingKey), message.mandatory ? 1 : 0, 0, &properties,
                               amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
        }
        guard status == AMQP_STATUS_OK.rawValue else { return .failed(connectionError(status, while: "publishing")) }
        return .sent
    }

    /// Whether the encoded properties fit in a content header frame; only headers can exceed the smallest
    /// frame_max (4096 bytes).
    private func propertiesFitInAFrame(_ properties: inout amqp_basic_properties_t) -> Bool {
        guard properties._flags & UInt32(AMQP_BASIC_HEADERS_FLAG) != 0 else { return true }
        let capacity = negotiated.frameMax - 8 - 12  // the frame's header and end, the class, weight and body size
        let scratch = amqp_bytes_t(len: capacity, bytes: arena.allocate(byteCount: capacity, alignment: 8))
        return amqp_encode_properties(UInt16(AMQP_BASIC_CLASS), &properties, scratch) >= 0
    }

    /// Writes the frames buffered in this pass and completes the publishes that waited for it; on a socket
    /// failure fails the connection and returns `false`.
    @discardableResult
    func flushWrites() -> Bool {
        guard finalError == nil else { return false }
        if let writer, !writer.isEmpty {
            do {
                try writer.flush(timeout: writeTimeout)
            } catch {
                fail(error)
                return false
            }
        }
        machine.writesFlushed()
        return true
    }
}
