internal import CRabbitMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Encodes the frequent frames (publishes, acks, nacks, rejects) into one buffer and writes it to the socket
/// with one system call per pass of the I/O loop.
///
/// librabbitmq writes every frame with its own system call, three per publish, which made the kernel most of a
/// publish's cost, and copies every body into its own buffer first. Here small bodies are copied into the
/// buffer, and large ones are written straight from the publisher's memory (`sendmsg` with the frame
/// headers between the body's pieces). Every other frame still goes out through librabbitmq, after
/// ``flush(timeout:)``, so frames keep their order; librabbitmq's own heartbeats may come before buffered
/// frames, which changes nothing.
///
/// Over TLS only the session can write to the socket: the buffer goes to librabbitmq's socket object instead
/// (its `send`, SSL_write, through `swift_amqp_socket_send_all` in the C shim), with every body copied into it,
/// so a pass costs one SSL_write where librabbitmq made three per publish. Confined to the I/O thread.
final class FrameWriter {
    private let socket: Int32
    /// librabbitmq's socket object to write through (a TLS session), or `nil` to write to `socket` with `sendmsg`.
    private let librarySocket: OpaquePointer?
    /// The largest frame payload the broker accepts (frame_max less the frame's header and end marker).
    private let maximumPayload: Int
    private var storage: UnsafeMutableRawPointer
    private var capacity: Int
    private(set) var count = 0

    /// Buffered bytes above which the loop writes at once rather than at the end of the pass.
    private static let flushThreshold = 64 * 1024
    /// Bodies up to this size are copied into the buffer; copying them costs less than a system call of their own.
    private static let inlineBodyLimit = 16 * 1024
    /// Pieces handed to one `sendmsg` (well under every platform's IOV_MAX).
    private static let piecesPerCall = 64
    private static let frameHeaderSize = 7
    private static let frameEnd: UInt8 = 0xCE
    #if os(Linux)
    private static let sendFlags = Int32(MSG_NOSIGNAL)
    #else
    private static let sendFlags: Int32 = 0  // librabbitmq sets SO_NOSIGPIPE on the socket instead
    #endif

    /// A writer for `socket`; with `librarySocket` (librabbitmq's socket object for that descriptor, e.g. a TLS
    /// session), everything is written through that object's own send.
    init(socket: Int32, frameMax: Int, librarySocket: OpaquePointer? = nil) {
        self.socket = socket
        self.librarySocket = librarySocket
        maximumPayload = frameMax - Self.frameHeaderSize - 1
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

    /// Publishes a message: buffers its method and header frames and its body (a large body is written at
    /// once, with everything buffered before it, straight from `body`).
    /// - Returns: `false`, with nothing buffered or written, when the encoded properties exceed a frame.
    /// - Throws: when the socket fails or takes nothing for `timeout`.
    func publish(channel: UInt16, exchange: String, routingKey: String, mandatory: Bool,
                 properties: inout amqp_basic_properties_t, body: UnsafeRawBufferPointer,
                 timeout: Duration) throws(RabbitMQError) -> Bool {
        let start = count
        // Method frame payload: at most 2 + 2 + 2 + 256 + 256 + 1 bytes; header frame: at most one frame payload.
        reserve(2 * (Self.frameHeaderSize + 1) + 519 + maximumPayload)

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
        let available = maximumPayload - (count - headerStart)
        let encoded = amqp_encode_properties(UInt16(AMQP_BASIC_CLASS), &properties,
                                             amqp_bytes_t(len: available, bytes: storage + count))
        guard encoded >= 0 else {
            count = start
            return false
        }
        count += Int(encoded)
        endFrame(payloadStart: headerStart)

        guard let base = body.baseAddress, body.count > 0 else { return true }
        if body.count <= Self.inlineBodyLimit || librarySocket != nil {
            appendBodyFrames(UnsafeRawBufferPointer(start: base, count: body.count), channel: channel)
        } else {
            try writeWithBody(UnsafeRawBufferPointer(start: base, count: body.count), channel: channel,
                              timeout: timeout)
        }
        return true
    }

    /// Appends `body` as body frames of at most one frame's payload each.
    private func appendBodyFrames(_ body: UnsafeRawBufferPointer, channel: UInt16) {
        let frames = (body.count + maximumPayload - 1) / maximumPayload
        reserve((Self.frameHeaderSize + 1) * frames + body.count)
        var offset = 0
        while offset < body.count {
            let size = min(maximumPayload, body.count - offset)
            beginFrame(type: UInt8(AMQP_FRAME_BODY), channel: channel)
            let bodyStart = count
            (storage + count).copyMemory(from: body.baseAddress! + offset, byteCount: size)
            count += size
            endFrame(payloadStart: bodyStart)
            offset += size
        }
    }

    /// Appends a basic.ack, basic.nack or basic.reject.
    func appendSettlement(_ frame: AckCoalescer.Frame, channel: UInt16) {
        reserve(Self.frameHeaderSize + 13 + 1)
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
    /// without progress: the broker reads its socket even while it blocks publishers, so a longer wait means a
    /// dead peer.
    func flush(timeout: Duration) throws(RabbitMQError) {
        guard count > 0 else { return }
        defer { count = 0 }
        if let librarySocket {
            let status = swift_amqp_socket_send_all(librarySocket, storage, count,
                                                    Int32(clamping: timeout.wholeMilliseconds))
            guard status == AMQP_STATUS_OK.rawValue else {
                let reason = status == AMQP_STATUS_TIMEOUT.rawValue
                    ? "the broker took nothing from the socket for \(timeout): connection presumed dead"
                    : "connection lost while writing to the broker: " + String(cString: amqp_error_string2(status))
                throw RabbitMQError(.connectionLost, reason, operation: "write")
            }
            return
        }
        var piece = iovec(iov_base: storage, iov_len: count)
        try send(&piece, count: 1, timeout: timeout)
    }

    /// Writes the buffer, then `body` as body frames: their headers and end markers go into the buffer, their
    /// payloads are sent from `body` without a copy.
    private func writeWithBody(_ body: UnsafeRawBufferPointer, channel: UInt16,
                               timeout: Duration) throws(RabbitMQError) {
        defer { count = 0 }
        let frames = (body.count + maximumPayload - 1) / maximumPayload
        reserve((Self.frameHeaderSize + 1) * frames)  // the buffer does not move while the pieces point into it
        var pieces: [iovec] = []
        pieces.reserveCapacity(2 * frames + 1)
        var unsent = 0  // where the buffered bytes not yet in a piece begin
        for index in 0..<frames {
            let offset = index * maximumPayload
            let size = min(maximumPayload, body.count - offset)
            if index > 0 { append(Self.frameEnd) }
            append(UInt8(AMQP_FRAME_BODY))
            append(channel)
            append(UInt32(size))
            pieces.append(iovec(iov_base: storage + unsent, iov_len: count - unsent))
            pieces.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress! + offset), iov_len: size))
            unsent = count
        }
        append(Self.frameEnd)
        pieces.append(iovec(iov_base: storage + unsent, iov_len: count - unsent))
        try pieces.withUnsafeMutableBufferPointer { pieces throws(RabbitMQError) in
            try send(pieces.baseAddress!, count: pieces.count, timeout: timeout)
        }
    }

    /// Sends `count` pieces completely, in calls of at most ``piecesPerCall`` pieces (advancing past what a
    /// partial write took); waits for room while the socket is full.
    private func send(_ pieces: UnsafeMutablePointer<iovec>, count: Int, timeout: Duration) throws(RabbitMQError) {
        var first = 0
        while first < count {
            var message = msghdr()
            message.msg_iov = pieces + first
            message.msg_iovlen = .init(min(Self.piecesPerCall, count - first))
            var sent = sendmsg(socket, &message, Self.sendFlags)
            if sent < 0 {
                let error = errno
                if error == EINTR { continue }
                guard error == EAGAIN || error == EWOULDBLOCK else {
                    throw RabbitMQError(.connectionLost, "connection lost while writing to the broker: "
                                            + String(cString: strerror(error)), operation: "write")
                }
                try waitUntilWritable(timeout: timeout)
                continue
            }
            while sent > 0, first < count {
                let length = pieces[first].iov_len
                if sent >= length {
                    sent -= length
                    first += 1
                } else {
                    pieces[first].iov_base = pieces[first].iov_base.map { $0 + sent }
                    pieces[first].iov_len = length - sent
                    sent = 0
                }
            }
            while first < count, pieces[first].iov_len == 0 { first += 1 }
        }
    }

    private func waitUntilWritable(timeout: Duration) throws(RabbitMQError) {
        var descriptor = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
        let result = poll(&descriptor, 1, Int32(clamping: timeout.wholeMilliseconds))
        if result == 0 {
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
