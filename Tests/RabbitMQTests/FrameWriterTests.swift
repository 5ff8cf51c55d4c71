import CRabbitMQ
import Foundation
import Testing

@testable import RabbitMQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The frame writer must put on the wire exactly what librabbitmq writes for the same call: both write to a
/// socket pair and the bytes are compared.
@Suite("Frame writer")
struct FrameWriterTests {
    /// librabbitmq's frame_max before login, which the writer is given too so that both split alike.
    static let frameMax = 65536

    /// Empty, small and inline-limit bodies are copied into the buffer; larger ones are sent from the caller's
    /// memory in one or several frames (frame_max 65536 leaves 65528 bytes of payload per frame).
    @Test("A publish is encoded as librabbitmq encodes it",
          arguments: [0, 1, 128, 16 * 1024, 16 * 1024 + 1, 65528, 65529, 3 * 65528 + 5, 1 << 20])
    func publishMatchesLibrabbitmq(bodySize: Int) throws {
        let body = (0..<bodySize).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try expectSameBytes(
            properties: MessageProperties(deliveryMode: .persistent),
            body: body, exchange: "orders", routingKey: "order.placed", mandatory: false)
    }

    @Test("Every property, headers and a mandatory flag are encoded as librabbitmq encodes them")
    func fullPropertiesMatchLibrabbitmq() throws {
        var properties = MessageProperties(deliveryMode: .transient)
        properties.contentType = "application/json"
        properties.contentEncoding = "gzip"
        properties.headers = ["x-request-id": "r-1", "attempt": .int32(3), "nested": ["ok": true]]
        properties.priority = 7
        properties.correlationID = "c-1"
        properties.replyTo = "replies"
        properties.expiration = .milliseconds(60_000)
        properties.messageID = "m-1"
        properties.timestamp = Date(timeIntervalSince1970: 1_700_000_000)
        properties.type = "order.placed"
        properties.userID = "guest"
        properties.appID = "tests"
        try expectSameBytes(properties: properties, body: Array("{\"id\":1}".utf8), exchange: "",
                            routingKey: "ünïcode.queue", mandatory: true)
    }

    @Test("Acks, nacks and rejects are encoded as librabbitmq encodes them")
    func settlementsMatchLibrabbitmq() throws {
        let frames: [AckCoalescer.Frame] = [
            .ack(deliveryTag: 1, multiple: false), .ack(deliveryTag: 1 << 40, multiple: true),
            .nack(deliveryTag: 7, multiple: true, requeue: false), .nack(deliveryTag: 8, multiple: false, requeue: true),
            .reject(deliveryTag: 9, requeue: true), .reject(deliveryTag: 10, requeue: false),
        ]
        let expected = try librabbitmqBytes { state in
            for frame in frames {
                let status: Int32
                switch frame {
                case .ack(let tag, let multiple):
                    status = amqp_basic_ack(state, 3, tag, multiple ? 1 : 0)
                case .nack(let tag, let multiple, let requeue):
                    status = amqp_basic_nack(state, 3, tag, multiple ? 1 : 0, requeue ? 1 : 0)
                case .reject(let tag, let requeue):
                    status = amqp_basic_reject(state, 3, tag, requeue ? 1 : 0)
                }
                guard status == AMQP_STATUS_OK.rawValue else { return status }
            }
            return AMQP_STATUS_OK.rawValue
        }
        let actual = try writerBytes { writer in
            for frame in frames { writer.appendSettlement(frame, channel: 3) }
        }
        #expect(actual == expected)
        #expect(actual.count == frames.count * 21)
    }

    @Test("Properties larger than a frame are refused and leave the buffer as it was")
    func oversizedPropertiesAreRefused() throws {
        let pair = try SocketPair()
        let writer = FrameWriter(socket: pair.writeEnd, frameMax: 4096)
        var properties = MessageProperties()
        properties.headers = ["big": .string(String(repeating: "x", count: 5000))]
        let arena = CArena()
        var c = arena.basicProperties(properties)
        let published = try [UInt8]([1, 2, 3]).withUnsafeBytes { body throws(RabbitMQError) in
            try writer.publish(channel: 1, exchange: "", routingKey: "q", mandatory: false, properties: &c,
                               body: body, timeout: .seconds(1))
        }
        #expect(!published)
        #expect(writer.isEmpty)
    }

    @Test("A write to a peer that reads nothing fails after the timeout instead of blocking")
    func writeToAStalledPeerTimesOut() throws {
        let pair = try SocketPair()
        let writer = FrameWriter(socket: pair.writeEnd, frameMax: Self.frameMax)
        let arena = CArena()
        var properties = arena.basicProperties(MessageProperties())
        let started = ContinuousClock.now
        #expect {
            // Far more than a socket pair's buffers hold, in small (buffered) and large (sent at once) bodies.
            for size in [100, 60_000] {
                let body = [UInt8](repeating: 0x61, count: size)
                for _ in 0..<(20_000_000 / size) {
                    _ = try body.withUnsafeBytes { body throws(RabbitMQError) in
                        try writer.publish(channel: 1, exchange: "", routingKey: "q", mandatory: false,
                                           properties: &properties, body: body, timeout: .milliseconds(200))
                    }
                    if writer.shouldFlush { try writer.flush(timeout: .milliseconds(200)) }
                }
            }
        } throws: { error in
            (error as? RabbitMQError)?.code == .connectionLost
        }
        #expect(ContinuousClock.now - started >= .milliseconds(200))
    }

    @Test("A write to a closed peer fails with connectionLost")
    func writeToAClosedPeerFails() throws {
        let pair = try SocketPair()
        let writer = FrameWriter(socket: pair.writeEnd, frameMax: Self.frameMax)
        pair.closeReadEnd()
        writer.appendSettlement(.ack(deliveryTag: 1, multiple: false), channel: 1)
        #expect {
            try writer.flush(timeout: .seconds(1))
        } throws: { error in
            (error as? RabbitMQError)?.code == .connectionLost
        }
    }

    // MARK: Helpers

    func expectSameBytes(properties: MessageProperties, body: [UInt8], exchange: String, routingKey: String,
                         mandatory: Bool, throughLibrary: Bool = false) throws {
        let arena = CArena()
        let expected = try librabbitmqBytes { state in
            var c = arena.basicProperties(properties)
            return body.withUnsafeBytes { body in
                amqp_basic_publish(state, 5, arena.bytes(exchange), arena.bytes(routingKey), mandatory ? 1 : 0, 0, &c,
                                   amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
            }
        }
        let actual = try writerBytes(throughLibrary: throughLibrary) { writer in
            var c = arena.basicProperties(properties)
            let published = try body.withUnsafeBytes { body throws(RabbitMQError) in
                try writer.publish(channel: 5, exchange: exchange, routingKey: routingKey, mandatory: mandatory,
                                   properties: &c, body: body, timeout: .seconds(5))
            }
            #expect(published)
        }
        #expect(expected.count > body.count + 40)  // three frames' worth: the comparison is not vacuous
        #expect(actual == expected)
    }

    /// What librabbitmq writes when `send` runs on a connection state whose socket is one end of a pair.
    private func librabbitmqBytes(_ send: (amqp_connection_state_t) -> Int32) throws -> [UInt8] {
        let pair = try SocketPair()
        let reader = pair.startReading()
        let state = try #require(amqp_new_connection())
        let socket = amqp_tcp_socket_new(state)
        amqp_tcp_socket_set_sockfd(socket, pair.writeEnd)
        pair.writeEndIsClosed = true  // amqp_destroy_connection closes it
        #expect(send(state) == AMQP_STATUS_OK.rawValue)
        amqp_destroy_connection(state)
        return reader.bytes()
    }

    /// What the frame writer writes after `append`; `throughLibrary`: through a librabbitmq socket object on the
    /// pair (the path TLS connections take, here with librabbitmq's plain TCP socket), not with `sendmsg`.
    func writerBytes(throughLibrary: Bool = false, _ append: (FrameWriter) throws -> Void) throws -> [UInt8] {
        let pair = try SocketPair()
        let reader = pair.startReading()
        guard throughLibrary else {
            let writer = FrameWriter(socket: pair.writeEnd, frameMax: Self.frameMax)
            try append(writer)
            try writer.flush(timeout: .seconds(5))
            pair.closeWriteEnd()
            return reader.bytes()
        }
        let state = try #require(amqp_new_connection())
        let socket = amqp_tcp_socket_new(state)
        amqp_tcp_socket_set_sockfd(socket, pair.writeEnd)
        pair.writeEndIsClosed = true  // amqp_destroy_connection closes it
        let writer = FrameWriter(socket: pair.writeEnd, frameMax: Self.frameMax, librarySocket: socket)
        try append(writer)
        try writer.flush(timeout: .seconds(5))
        amqp_destroy_connection(state)
        return reader.bytes()
    }
}

/// A connected pair of stream sockets: the code under test writes to one end, the test reads the other.
final class SocketPair: @unchecked Sendable {
    let writeEnd: Int32
    private var readEnd: Int32
    var writeEndIsClosed = false

    init() throws {
        var descriptors: [Int32] = [0, 0]
        #if os(Linux)
        let type = Int32(SOCK_STREAM.rawValue)
        #else
        let type = SOCK_STREAM
        #endif
        guard socketpair(AF_UNIX, type, 0, &descriptors) == 0 else {
            throw RabbitMQError(.invalidArgument, "socketpair failed (errno \(errno))")
        }
        writeEnd = descriptors[0]
        readEnd = descriptors[1]
    }

    deinit {
        closeWriteEnd()
        closeReadEnd()
    }

    func closeWriteEnd() {
        guard !writeEndIsClosed else { return }
        close(writeEnd)
        writeEndIsClosed = true
    }

    func closeReadEnd() {
        guard readEnd >= 0 else { return }
        close(readEnd)
        readEnd = -1
    }

    /// Reads on another thread until the write end is closed (writers may block on a full socket meanwhile).
    func startReading() -> Reader {
        let reader = Reader()
        let descriptor = readEnd
        Thread.detachNewThread {
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                guard count > 0 else { break }
                bytes += chunk[0..<count]
            }
            reader.finish(bytes)
        }
        return reader
    }

    final class Reader: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: [UInt8] = []

        func finish(_ bytes: [UInt8]) {
            result = bytes
            done.signal()
        }

        /// Everything read, once the write end is closed.
        func bytes() -> [UInt8] {
            done.wait()
            return result
        }
    }
}
