import CRabbitMQ
import DequeModule
import Foundation
import Logging
import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The real ``IOLoop`` on its own thread, against a scripted AMQP peer on the other end of a socket pair: the
/// peer is a second librabbitmq connection state that reads what the client writes and answers as a broker would.
@Suite("IOLoop against a scripted AMQP peer", .timeLimit(.minutes(1)))
struct ScriptedPeerTests {
    @Test("Open, confirms (multiple ack and nack), a declare, a delivery and its ack, then the closing handshake")
    func conversation() async throws {
        let session = try PeerSession()
        session.peer.run { peer in
            let open = try peer.expect(AMQP_CHANNEL_OPEN_METHOD)
            try peer.send(AMQP_CHANNEL_OPEN_OK_METHOD, amqp_channel_open_ok_t(channel_id: amqp_empty_bytes),
                          channel: open.channel)
            try peer.expect(AMQP_CONFIRM_SELECT_METHOD)
            try peer.send(AMQP_CONFIRM_SELECT_OK_METHOD, amqp_confirm_select_ok_t(dummy: 0), channel: 1)
            for index in 1...3 {
                let publish = try peer.expect(AMQP_BASIC_PUBLISH_METHOD)
                let method = publish.decoded(amqp_basic_publish_t.self)
                try peer.check(method.routing_key.string == "q", "routing key \(method.routing_key.string)")
                let body = try peer.content()
                try peer.check(body == [UInt8(index)], "body \(body)")
            }
            try peer.send(AMQP_BASIC_ACK_METHOD, amqp_basic_ack_t(delivery_tag: 2, multiple: 1), channel: 1)
            try peer.send(AMQP_BASIC_NACK_METHOD, amqp_basic_nack_t(delivery_tag: 3, multiple: 0, requeue: 0),
                          channel: 1)
            try peer.expect(AMQP_QUEUE_DECLARE_METHOD)
            try peer.send(AMQP_QUEUE_DECLARE_OK_METHOD, amqp_queue_declare_ok_t(
                queue: peer.bytes("amq.gen-q"), message_count: 5, consumer_count: 1), channel: 1)
            try peer.expect(AMQP_BASIC_CONSUME_METHOD)
            try peer.send(AMQP_BASIC_CONSUME_OK_METHOD,
                          amqp_basic_consume_ok_t(consumer_tag: peer.bytes("ctag")), channel: 1)
            try peer.send(AMQP_BASIC_DELIVER_METHOD, amqp_basic_deliver_t(
                consumer_tag: peer.bytes("ctag"), delivery_tag: 1, redelivered: 0,
                exchange: peer.bytes("x"), routing_key: peer.bytes("k")), channel: 1)
            try peer.sendContent(Array("hello".utf8), channel: 1)
            let ack = try peer.expect(AMQP_BASIC_ACK_METHOD).decoded(amqp_basic_ack_t.self)
            try peer.check(ack.delivery_tag == 1 && ack.multiple == 0, "ack \(ack.delivery_tag)")
            try peer.expect(AMQP_CONNECTION_CLOSE_METHOD)
            try peer.send(AMQP_CONNECTION_CLOSE_OK_METHOD, amqp_connection_close_ok_t(dummy: 0), channel: 0)
        }

        let link = try await session.openChannel()
        #expect(link.number == 1)
        _ = try await session.request(.confirmSelect, on: link)
        let tickets = try (1...3).map { index in try session.publish(Data([UInt8(index)]), on: link) }
        try await tickets[0].wait()
        try await tickets[1].wait()
        await #expect { try await tickets[2].wait() } throws: { ($0 as? RabbitMQError)?.code == .publishNacked }

        let declared = try await session.request(.queueDeclare(name: "", passive: false, durable: false,
                                                               exclusive: true, autoDelete: true, arguments: [:]),
                                                 on: link)
        #expect("\(declared)" == #"queueDeclared(name: "amq.gen-q", messageCount: 5, consumerCount: 1)"#)

        let buffer = DeliveryBuffer()
        try session.commands.submit(.registerConsumer(link, consumerTag: "ctag", buffer))
        _ = try await session.request(.basicConsume(queue: "q", consumerTag: "ctag", noAck: false, exclusive: false,
                                                    arguments: [:]), on: link)
        let delivery = try #require(try await buffer.next().first)
        #expect(delivery.bodyString == "hello")
        #expect(delivery.routingKey == "k")
        try session.commands.submit(.settle(link, .ack(deliveryTag: 1, multiple: false)))

        await session.close()
        let ended = await session.loopEnded()
        #expect(ended.code == .clientClosed)
        #expect(await session.peer.failures() == [])
    }

    @Test("The broker closes a channel because of a request: close-ok goes back, the request fails, others go on")
    func brokerClosesAChannel() async throws {
        let session = try PeerSession()
        session.peer.run { peer in
            for _ in 1...2 {
                let open = try peer.expect(AMQP_CHANNEL_OPEN_METHOD)
                try peer.send(AMQP_CHANNEL_OPEN_OK_METHOD, amqp_channel_open_ok_t(channel_id: amqp_empty_bytes),
                              channel: open.channel)
            }
            let declare = try peer.expect(AMQP_QUEUE_DECLARE_METHOD)
            try peer.check(declare.channel == 1, "declare on \(declare.channel)")
            try peer.send(AMQP_CHANNEL_CLOSE_METHOD, amqp_channel_close_t(
                reply_code: 404, reply_text: peer.bytes("NOT_FOUND - no queue 'missing'"),
                class_id: 50, method_id: 10), channel: 1)
            let closeOk = try peer.expect(AMQP_CHANNEL_CLOSE_OK_METHOD)
            try peer.check(closeOk.channel == 1, "close-ok on \(closeOk.channel)")
            try peer.expect(AMQP_QUEUE_PURGE_METHOD)
            try peer.send(AMQP_QUEUE_PURGE_OK_METHOD, amqp_queue_purge_ok_t(message_count: 3), channel: 2)
            try peer.expect(AMQP_CONNECTION_CLOSE_METHOD)
            try peer.send(AMQP_CONNECTION_CLOSE_OK_METHOD, amqp_connection_close_ok_t(dummy: 0), channel: 0)
        }
        let one = try await session.openChannel()
        let two = try await session.openChannel()
        await #expect {
            try await session.request(.queueDeclare(name: "missing", passive: true, durable: false, exclusive: false,
                                                    autoDelete: false, arguments: [:]), on: one)
        } throws: { error in
            let error = error as? RabbitMQError
            return error?.code == .channelClosed && error?.replyCode == 404 && error?.operation == "queue.declare"
        }
        #expect(!one.isOpen)
        let purged = try await session.request(.queuePurge(queue: "q"), on: two)
        #expect("\(purged)" == "messageCount(3)")
        await session.close()
        #expect(await session.loopEnded().code == .clientClosed)
        #expect(await session.peer.failures() == [])
    }

    @Test("The peer goes away: every waiting operation fails with connectionLost")
    func peerDisappears() async throws {
        let session = try PeerSession()
        session.peer.run { peer in
            let open = try peer.expect(AMQP_CHANNEL_OPEN_METHOD)
            try peer.send(AMQP_CHANNEL_OPEN_OK_METHOD, amqp_channel_open_ok_t(channel_id: amqp_empty_bytes),
                          channel: open.channel)
            try peer.expect(AMQP_QUEUE_PURGE_METHOD)
            peer.hangUp()
        }
        let link = try await session.openChannel()
        await #expect {
            try await session.request(.queuePurge(queue: "q"), on: link)
        } throws: { ($0 as? RabbitMQError)?.code == .connectionLost }
        #expect(await session.loopEnded().code == .connectionLost)
        #expect(!link.isOpen)
    }
}

/// A client ``IOLoop`` on its own thread, wired to a ``ScriptedPeer`` through a socket pair.
private final class PeerSession: Sendable {
    let commands: EngineCommandQueue
    let peer: ScriptedPeer
    private let ended = Locked<(error: RabbitMQError?, waiter: CheckedContinuation<RabbitMQError, Never>?)>((nil, nil))
    private let requestIDs = Locked<UInt64>(0)

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
        commands = try EngineCommandQueue()
        peer = ScriptedPeer(socket: descriptors[1])
        let clientSocket = descriptors[0]
        let commands = commands
        let ended = ended
        Thread.detachNewThread {
            let state = amqp_new_connection()!
            amqp_tcp_socket_set_sockfd(amqp_tcp_socket_new(state), clientSocket)
            let negotiated = NegotiatedParameters(
                endpoint: .init(host: "peer", port: 0), heartbeatSeconds: 0, frameMax: 65536, channelMax: 8,
                serverProperties: [:], usesTLS: false)
            let logger = Logger(label: "scripted-peer-test")
            let loop = IOLoop(connection: state, negotiated: negotiated, commands: commands,
                              requestTimeout: .seconds(10), arena: CArena(), logger: logger,
                              makeLink: { number, window, commands in
                                  ChannelLink(number: number, commands: commands, windowCapacity: window,
                                              staleSettlements: Observability(.init(), logger: logger))
                              },
                              onEvent: { _ in })
            let error = loop.run()
            let waiter = ended.withLock { state in
                state.error = error
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: error)
        }
    }

    func openChannel() async throws -> ChannelLink {
        try await withCheckedThrowingContinuation { continuation in
            do { try commands.submit(.openChannel(window: 10, continuation)) } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    func request(_ method: OutgoingMethod, on link: ChannelLink) async throws -> MethodReply {
        let id = requestIDs.withLock { id in
            id += 1
            return id
        }
        return try await withCheckedThrowingContinuation { continuation in
            do {
                try commands.submit(.request(Request(id: id, link: link, method: method,
                                                     deadline: .now + .seconds(10), continuation: continuation)))
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    func publish(_ body: Data, on link: ChannelLink) throws -> PublishTicket {
        let ticket = PublishTicket(deadline: .now + .seconds(10), exchange: "")
        try commands.submit(.publish(OutgoingPublish(link: link, message: OutgoingMessage(
            exchange: "", routingKey: "q", mandatory: false, properties: MessageProperties(), body: body),
            ticket: ticket)))
        return ticket
    }

    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            do { try commands.submit(.closeConnection(continuation)) } catch { continuation.resume() }
        }
    }

    /// The error the loop ended with, once it has.
    func loopEnded() async -> RabbitMQError {
        await withCheckedContinuation { continuation in
            let error = ended.withLock { state in
                if state.error == nil { state.waiter = continuation }
                return state.error
            }
            if let error { continuation.resume(returning: error) }
        }
    }
}

/// The broker's end of the socket pair: a librabbitmq connection state whose script runs on a thread of its own
/// and reads the client's frames with a timeout, so that a client that says nothing fails the test, not hangs it.
private final class ScriptedPeer: @unchecked Sendable {
    struct ScriptError: Error, CustomStringConvertible {
        let description: String
    }

    /// A method frame the client sent; its decoded body lives until the next read.
    struct Method {
        let channel: UInt16
        let method: amqp_method_t

        func decoded<T>(_ type: T.Type) -> T { method.decoded!.assumingMemoryBound(to: T.self).pointee }
    }

    private let state: amqp_connection_state_t
    private let recorded = Locked<(failures: [String], done: Bool, waiter: CheckedContinuation<[String], Never>?)>(
        ([], false, nil))

    /// C strings the script sent, freed with the peer.
    private let strings = Locked<[UnsafeMutablePointer<CChar>]>([])

    init(socket: Int32) {
        state = amqp_new_connection()!
        amqp_tcp_socket_set_sockfd(amqp_tcp_socket_new(state), socket)
    }

    deinit {
        for string in strings.withLock({ $0 }) { free(string) }
    }

    /// `string` as AMQP bytes that stay valid while the peer lives.
    func bytes(_ string: String) -> amqp_bytes_t {
        let copy = strdup(string)!
        strings.withLock { $0.append(copy) }
        return amqp_bytes_t(len: strlen(copy), bytes: UnsafeMutableRawPointer(copy))
    }

    /// Runs the script on its own thread; a thrown error is recorded for ``failures()``.
    func run(_ script: @escaping @Sendable (ScriptedPeer) throws -> Void) {
        Thread.detachNewThread { [self] in
            var failures: [String] = []
            do {
                try script(self)
            } catch {
                failures.append("\(error)")
                hangUp()  // the client's waiting operations then fail rather than hang the test
            }
            // Read on until the client hangs up, as a broker would, so that nothing it writes fails.
            var frame = amqp_frame_t()
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            while amqp_simple_wait_frame_noblock(state, &frame, &timeout) == AMQP_STATUS_OK.rawValue {}
            amqp_destroy_connection(state)
            let waiter = recorded.withLock { recorded in
                recorded.failures += failures
                recorded.done = true
                defer { recorded.waiter = nil }
                return recorded.waiter
            }
            waiter?.resume(returning: failures)
        }
    }

    /// What went wrong in the script, once it has ended.
    func failures() async -> [String] {
        await withCheckedContinuation { continuation in
            let result = recorded.withLock { recorded -> [String]? in
                if recorded.done { return recorded.failures }
                recorded.waiter = continuation
                return nil
            }
            if let result { continuation.resume(returning: result) }
        }
    }

    func check(_ condition: Bool, _ what: @autoclosure () -> String) throws {
        if !condition { throw ScriptError(description: "unexpected \(what())") }
    }

    private func nextFrame() throws -> amqp_frame_t {
        var frame = amqp_frame_t()
        while true {
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            let status = amqp_simple_wait_frame_noblock(state, &frame, &timeout)
            guard status == AMQP_STATUS_OK.rawValue else {
                throw ScriptError(description: "reading: \(String(cString: amqp_error_string2(status)))")
            }
            if frame.frame_type != UInt8(AMQP_FRAME_HEARTBEAT) { return frame }
        }
    }

    /// Reads the client's next frame, which must be the method `id`.
    @discardableResult
    func expect(_ id: amqp_method_number_t) throws -> Method {
        let frame = try nextFrame()
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD), frame.payload.method.id == id else {
            let name = frame.frame_type == UInt8(AMQP_FRAME_METHOD)
                ? String(cString: amqp_method_name(frame.payload.method.id)) : "frame type \(frame.frame_type)"
            throw ScriptError(description: "expected \(String(cString: amqp_method_name(id))), got \(name)")
        }
        return Method(channel: frame.channel, method: frame.payload.method)
    }

    /// Reads a content header and its body frames.
    func content() throws -> [UInt8] {
        let header = try nextFrame()
        guard header.frame_type == UInt8(AMQP_FRAME_HEADER) else {
            throw ScriptError(description: "expected a content header, got frame type \(header.frame_type)")
        }
        var body: [UInt8] = []
        while body.count < Int(header.payload.properties.body_size) {
            let frame = try nextFrame()
            guard frame.frame_type == UInt8(AMQP_FRAME_BODY) else {
                throw ScriptError(description: "expected a body frame, got frame type \(frame.frame_type)")
            }
            let fragment = frame.payload.body_fragment
            body += UnsafeRawBufferPointer(start: fragment.bytes, count: fragment.len)
        }
        return body
    }

    func send<T: BitwiseCopyable>(_ id: amqp_method_number_t, _ method: T, channel: UInt16) throws {
        var method = method
        let status = amqp_send_method(state, channel, id, &method)
        guard status == AMQP_STATUS_OK.rawValue else { throw ScriptError(description: "sending: status \(status)") }
    }

    /// Sends a content header and one body frame (a delivery's content).
    func sendContent(_ body: [UInt8], channel: UInt16) throws {
        var properties = amqp_basic_properties_t()
        try withUnsafeMutablePointer(to: &properties) { properties in
            var header = amqp_frame_t()
            header.frame_type = UInt8(AMQP_FRAME_HEADER)
            header.channel = channel
            header.payload.properties.class_id = UInt16(AMQP_BASIC_CLASS)
            header.payload.properties.body_size = UInt64(body.count)
            header.payload.properties.decoded = UnsafeMutableRawPointer(properties)
            guard amqp_send_frame(state, &header) == AMQP_STATUS_OK.rawValue else {
                throw ScriptError(description: "sending a header")
            }
        }
        try body.withUnsafeBytes { bytes in
            var frame = amqp_frame_t()
            frame.frame_type = UInt8(AMQP_FRAME_BODY)
            frame.channel = channel
            frame.payload.body_fragment = amqp_bytes_t(len: bytes.count,
                                                       bytes: UnsafeMutableRawPointer(mutating: bytes.baseAddress))
            guard amqp_send_frame(state, &frame) == AMQP_STATUS_OK.rawValue else {
                throw ScriptError(description: "sending a body")
            }
        }
    }

    /// Closes the peer's end, as a broker that died.
    func hangUp() {
        shutdown(amqp_get_sockfd(state), Int32(SHUT_RDWR))
    }
}
