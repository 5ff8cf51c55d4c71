internal import CRabbitMQ

/// Scratch memory for the C structures of one librabbitmq call (strings, tables, properties).
///
/// The I/O loop owns one arena and resets it after each call, so building a call's arguments costs no
/// `malloc` once the first chunk is warm. Chunks never move, so pointers stay valid until ``reset()``.
final class CArena {
    private var chunks: [UnsafeMutableRawPointer] = []
    private var current: UnsafeMutableRawPointer?
    private var offset = 0
    private var capacity = 0
    private static let chunkSize = 16 * 1024

    deinit {
        for chunk in chunks { chunk.deallocate() }
    }

    /// Memory for `byteCount` bytes aligned to `alignment`, valid until the next ``reset()``.
    func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer {
        let aligned = (offset + alignment - 1) & ~(alignment - 1)
        if let current, aligned + byteCount <= capacity {
            offset = aligned + byteCount
            return current + aligned
        }
        let size = max(Self.chunkSize, byteCount + alignment)
        let chunk = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        chunks.append(chunk)
        current = chunk
        capacity = size
        offset = byteCount
        return chunk
    }

    /// Typed memory for `count` values.
    func allocate<T>(_: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        allocate(byteCount: MemoryLayout<T>.stride * max(count, 1), alignment: MemoryLayout<T>.alignment)
            .bindMemory(to: T.self, capacity: max(count, 1))
    }

    /// Keeps the first chunk, frees the rest (a large message's headers do not pin memory).
    func reset() {
        offset = 0
        guard chunks.count > 1 || capacity > Self.chunkSize else { return }
        for chunk in chunks { chunk.deallocate() }
        chunks.removeAll(keepingCapacity: true)
        current = nil
        capacity = 0
    }

    /// The UTF-8 bytes of `string`, copied into the arena.
    func bytes(_ string: String) -> amqp_bytes_t {
        var string = string
        return string.withUTF8 { bytes(UnsafeRawBufferPointer($0)) }
    }

    /// `bytes`, copied into the arena.
    func bytes(_ source: UnsafeRawBufferPointer) -> amqp_bytes_t {
        guard source.count > 0, let base = source.baseAddress else { return amqp_empty_bytes }
        let target = allocate(byteCount: source.count, alignment: 1)
        target.copyMemory(from: base, byteCount: source.count)
        return amqp_bytes_t(len: source.count, bytes: target)
    }

    /// A NUL-terminated copy of `string`.
    func cString(_ string: String) -> UnsafePointer<CChar> {
        var string = string
        return string.withUTF8 { utf8 in
            let target = allocate(byteCount: utf8.count + 1, alignment: 1).bindMemory(to: CChar.self, capacity: utf8.count + 1)
            if let base = utf8.baseAddress {
                UnsafeMutableRawPointer(target).copyMemory(from: base, byteCount: utf8.count)
            }
            target[utf8.count] = 0
            return UnsafePointer(target)
        }
    }
}

extension amqp_bytes_t {
    /// The bytes as a Swift string (invalid UTF-8 is repaired, never trusted).
    var string: String {
        guard len > 0, let bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: bytes, count: len), as: UTF8.self)
    }

    /// A copy of the bytes.
    var array: [UInt8] {
        guard len > 0, let bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: bytes, count: len))
    }
}
