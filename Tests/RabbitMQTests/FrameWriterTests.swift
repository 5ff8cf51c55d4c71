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

    @Test("A publish is encoded as librabbitmq encodes it", arguments: [0, 1, 128, 65536 - 8])
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
        let appended = [UInt8]([1, 2, 3]).withUnsafeBytes { body in
            writer.appendPublish(channel: 1, exchange: "", routingKey: "q", mandatory: false, properties: &c, body: body)
        }
        #expect(!appended)
        #expect(writer.isEmpty)
        #expect(writer.canPublish(bodySize: 4088))
        #expect(!writer.canPublish(bodySize: 4089))
    }

    @Test("A write to a peer that reads nothing fails after the timeout instead of blocking")
    func writeToAStalledPeerTimesOut() throws {
        let pair = try SocketPair()
        let writer = FrameWriter(socket: pair.writeEnd, frameMax: Self.frameMax)
        let arena = CArena()
        var properties = arena.basicProperties(MessageProperties())
        let body = [UInt8](repeating: 0x61, count: 60_000)
        // Far more than a socket pair's buffers hold.
        for _ in 0..<200 {
            _ = body.withUnsafeBytes { body in
                writer.appendPublish(channel: 1, exchange: "", routingKey: "q", mandatory: false,
                                     properties: &properties, body: body)
            }
        }
        let started = ContinuousClock.now
        #expect {
            try writer.flush(timeout: .milliseconds(200))
        } throws: { error in
            (error as? RabbitMQError)?.code == .connectionLost
        }
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        #expect(writer.isEmpty)
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

    private func expectSameBytes(properties: MessageProperties, body: [UInt8], exchange: String, routingKey: String,
                                 mandatory: Bool) throws {
        let arena = CArena()
        let expected = try librabbitmqBytes { state in
            var c = arena.basicProperties(properties)
            return body.withUnsafeBytes { body in
                amqp_basic_publish(state, 5, arena.bytes(exchange), arena.bytes(routingKey), mandatory ? 1 : 0, 0, &c,
                                   amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
            }
        }
        let actual = try writerBytes { writer in
            var c = arena.basicProperties(properties)
            let appended = body.withUnsafeBytes { body in
                writer.appendPublish(channel: 5, exchange: exchange, routingKey: routingKey, mandatory: mandatory,
                                     properties: &c, body: body)
            }
            #expect(appended)
        }
        #expect(expected.count > body.count + 40)  // three frames' worth: the comparison is not vacuous
        #expect(actual == expected)
    }

    /// What librabbitmq writes when `send` runs on a connection state whose socket is one end of a pair.
    private func librabbitmqBytes(_ send: (amqp_connection_state_t) -> Int32) throws -> [UInt8] {
        let pair = try SocketPair()
        let state = try #require(amqp_new_connection())
        let socket = amqp_tcp_socket_new(state)
        amqp_tcp_socket_set_sockfd(socket, pair.writeEnd)
        pair.writeEndIsOwnedElsewhere = true  // amqp_destroy_connection closes it
        defer { amqp_destroy_connection(state) }
        #expect(send(state) == AMQP_STATUS_OK.rawValue)
        return pair.readAvailable()
    }

    /// What the frame writer writes after `append`.
    private func writerBytes(_ append: (FrameWriter) -> Void) throws -> [UInt8] {
        let pair = try SocketPair()
        let writer = FrameWriter(socket: pair.writeEnd, frameMax: Self.frameMax)
        append(writer)
        try writer.flush(timeout: .seconds(5))
        return pair.readAvailable()
    }
}

/// A connected pair of stream sockets: the code under test writes to one end, the test reads the other.
private final class SocketPair {
    let writeEnd: Int32
    private var readEnd: Int32
    var writeEndIsOwnedElsewhere = false

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
        _ = fcntl(readEnd, F_SETFL, fcntl(readEnd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        if !writeEndIsOwnedElsewhere { close(writeEnd) }
        if readEnd >= 0 { close(readEnd) }
    }

    func closeReadEnd() {
        close(readEnd)
        readEnd = -1
    }

    /// Everything written so far.
    func readAvailable() -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            guard count > 0 else { return bytes }
            bytes += chunk[0..<count]
        }
    }
}
