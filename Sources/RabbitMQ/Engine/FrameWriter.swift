import CRabbitMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Encodes the frequent frames (publishes, acks, nacks, rejects) into one buffer and writes it to the socket
/// with one `send` per pass of the I/O loop.
///
/// librabbitmq writes every frame with its own system call, three per publish, which made the kernel most of a
/// publish's cost. Every other frame still goes out through librabbitmq, after ``flush(timeout:)``, so frames
/// keep their order; librabbitmq's own heartbeats may come before buffered frames, which changes nothing.
/// Used on plain TCP connections only: over TLS, only librabbitmq can write to the session.
/// Confined to the I/O thread.
final class FrameWriter {
    private let socket: Int32
    /// The largest frame payload the broker accepts (frame_max less the frame's header and end marker).
    private let maximumPayload: Int
    private var storage: UnsafeMutableRawPointer
    private var capacity: Int
    private(set) var count = 0

    /// Buffered bytes above which a publish is written at once rather than at the end of the pass.
    private static let flushThreshold = 64 * 1024
    private static let frameOverhead = 8
    private static let frameEnd: UInt8 = 0xCE
    #if os(Linux)
    private static let sendFlags = Int32(MSG_NOSIGNAL)
    #else
    private static let sendFlags: Int32 = 0  // librabbitmq sets SO_NOSIGPIPE on the socket instead
    #endif

    init(socket: Int32, frameMax: Int) {
        self.socket = socket
        maximumPayload = frameMax - Self.frameOverhead
        capacity = Self.flushThreshold + 2 * frameMax
        storage = .allocate(byteCount: capacity, alignment: 16)
        // librabbitmq's sockets are non-blocking already; the write timeout relies on it.
        _ = fcntl(socket, F_SETFL, fcntl(socket, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        storage.deallocate()
    }

    /// Whether everything buffered is written.
    var isEmpty: Bool { count == 0 }

    /// Whether enough is buffered to write it now rather than at the end of the pass.
    var shouldFlush: Bool { count >= Self.flushThreshold }

    /// Whether a publish with a body of `size` bytes is encoded here: one body frame at most. Larger bodies go
    /// through librabbitmq, which sends them from its own buffer in frame-sized pieces.
    func canPublish(bodySize size: Int) -> Bool {
        size <= maximumPayload
    }

    /// Appends a basic.publish: the method, the content header and the body frame.
    /// - Returns: `false`, with nothing appended, when the encoded properties exceed a frame.
    func appendPublish(channel: UInt16, exchange: String, routingKey: String, mandatory: Bool,
                       properties: inout amqp_basic_properties_t, body: UnsafeRawBufferPointer) -> Bool {
        precondition(body.count <= maximumPayload, "the caller checks canPublish(bodySize:)")
        let start = count
        // Method frame, payload at most 2 + 2 + 2 + 256 + 256 + 1 bytes; header frame, at most one frame payload.
        reserve(3 * Self.frameOverhead + 519 + maximumPayload + body.count)

        beginFrame(type: UInt8(AMQP_FRAME_METHOD), channel: channel)
        let methodStart = count
        append(UInt32(AMQP_BASIC_PUBLISH_METHOD))
        append(UInt16(0))  // reserved (ticket)
        appendShortString(exchange)
        appendShortString(routingKey)
        append(UInt8(mandatory ? 1 : 0))
        endFrame(payloadStart: methodStart)

        beginFrame(type: UInt8(AMQP_FRAME_HEADER), channel: channel)
        let headerStart = count
        append(UInt16(AMQP_BASIC_CLASS))
        append(UInt16(0))  // weight
        append(UInt64(body.count))
        let available = min(capacity - count, maximumPayload - (count - headerStart))
        let encoded = amqp_encode_properties(UInt16(AMQP_BASIC_CLASS), &properties,
                                             amqp_bytes_t(len: available, bytes: storage + count))
        guard encoded >= 0 else {
            count = start
            return false
        }
        count += Int(encoded)
        endFrame(payloadStart: headerStart)

        if let base = body.baseAddress, body.count > 0 {
            beginFrame(type: UInt8(AMQP_FRAME_BODY), channel: channel)
            let bodyStart = count
            (storage + count).copyMemory(from: base, byteCount: body.count)
            count += body.count
            endFrame(payloadStart: bodyStart)
        }
        return true
    }

    /// Appends a basic.ack, basic.nack or basic.reject.
    func appendSettlement(_ frame: AckCoalescer.Frame, channel: UInt16) {
        reserve(2 * Self.frameOverhead + 13)
        beginFrame(type: UInt8(AMQP_FRAME_METHOD), channel: channel)
        let payloadStart = count
        switch frame {
        case .ack(let tag, let multiple):
            append(UInt32(AMQP_BASIC_ACK_METHOD))
            append(tag)
            append(UInt8(multiple ? 1 : 0))
        case .nack(let tag, let multiple, let requeue):
            append(UInt32(AMQP_BASIC_NACK_METHOD))
            append(tag)
            append(UInt8((multiple ? 1 : 0) | (requeue ? 2 : 0)))
        case .reject(let tag, let requeue):
            append(UInt32(AMQP_BASIC_REJECT_METHOD))
            append(tag)
            append(UInt8(requeue ? 1 : 0))
        }
        endFrame(payloadStart: payloadStart)
    }

    /// Writes everything buffered. While the socket's send buffer is full it waits for room, at most `timeout`
    /// in all: the broker reads its socket even while it blocks publishers, so a longer wait means a dead peer.
    func flush(timeout: Duration) throws(RabbitMQError) {
        var written = 0
        var deadline: ContinuousClock.Instant?
        defer { count = 0 }
        while written < count {
            let sent = send(socket, storage + written, count - written, Self.sendFlags)
            if sent > 0 {
                written += sent
                continue
            }
            let error = errno
            if sent < 0, error == EINTR { continue }
            guard sent < 0, error == EAGAIN || error == EWOULDBLOCK else {
                throw RabbitMQError(.connectionLost, "connection lost while writing to the broker: "
                                        + String(cString: strerror(error)), operation: "write")
            }
            let due = deadline ?? .now + timeout
            deadline = due
            try waitUntilWritable(until: due, timeout: timeout)
        }
    }

    private func waitUntilWritable(until deadline: ContinuousClock.Instant, timeout: Duration) throws(RabbitMQError) {
        var descriptor = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
        let remaining = deadline - .now
        let result = poll(&descriptor, 1, Int32(max(0, remaining.wholeMilliseconds)) + 1)
        if result == 0, ContinuousClock.now >= deadline {
            throw RabbitMQError(.connectionLost, "the broker took nothing from the socket for \(timeout): "
                                    + "connection presumed dead", operation: "write")
        }
    }

    // MARK: Encoding

    private func reserve(_ extra: Int) {
        guard count + extra > capacity else { return }
        let grown = max(capacity * 2, count + extra)
        let replacement = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: 16)
        replacement.copyMemory(from: storage, byteCount: count)
        storage.deallocate()
        storage = replacement
        capacity = grown
    }

    private func beginFrame(type: UInt8, channel: UInt16) {
        append(type)
        append(channel)
        count += 4  // the payload size, written by endFrame
    }

    private func endFrame(payloadStart: Int) {
        (storage + payloadStart - 4).storeBytes(of: UInt32(count - payloadStart).bigEndian, as: UInt32.self)
        append(Self.frameEnd)
    }

    private func append<Value: FixedWidthInteger>(_ value: Value) {
        (storage + count).storeBytes(of: value.bigEndian, as: Value.self)
        count += MemoryLayout<Value>.size
    }

    /// A short string: its length in one byte, then its UTF-8 bytes (names are validated to 255 bytes).
    private func appendShortString(_ string: String) {
        var string = string
        string.withUTF8 { utf8 in
            let length = min(utf8.count, 255)
            append(UInt8(length))
            if let base = utf8.baseAddress { (storage + count).copyMemory(from: base, byteCount: length) }
            count += length
        }
    }
}
