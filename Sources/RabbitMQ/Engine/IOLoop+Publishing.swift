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
        if writer.shouldFlush { flushWrites() }
    }

    private enum SendOutcome {
        case sent
        /// The properties (headers, in practice) do not fit in a frame; nothing was sent.
        case propertiesTooLarge
        /// The socket failed: the connection is lost.
        case failed(RabbitMQError)
    }

    /// Hands the frames of a publish to the frame writer (over TLS too: it writes through the session).
    private func send(_ message: OutgoingMessage, properties: inout amqp_basic_properties_t,
                      on channel: UInt16) -> SendOutcome {
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

    /// Writes the frames buffered in this pass and completes the publishes that waited for it; on a socket
    /// failure fails the connection and returns `false`.
    @discardableResult
    func flushWrites() -> Bool {
        guard finalError == nil else { return false }
        if !writer.isEmpty {
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
