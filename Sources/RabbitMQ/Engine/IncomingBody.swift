import Foundation

/// The body of a message arriving in body frames, copied once out of librabbitmq's frame buffers: into a block
/// of the connection's ``BodyPool`` when it is large, into a `Data` of its own otherwise.
struct IncomingBody {
    /// The size the header frame announced.
    let size: Int
    private(set) var count = 0
    private var block: BodyBlock?
    private var small = Data()

    init(size: Int, pool: BodyPool) {
        self.size = size
        if size >= BodyPool.pooledSize { block = pool.block(for: size) }
    }

    var isComplete: Bool { count >= size }

    /// Copies a body frame's payload; bytes beyond the announced size are dropped.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        let length = min(bytes.count, size - count)
        if let block {
            (block.pointer + count).copyMemory(from: base, byteCount: length)
        } else if length == size {
            small = Data(bytes: base, count: length)  // the whole body in one frame: one allocation
        } else {
            if count == 0 { small.reserveCapacity(size) }
            small.append(base.assumingMemoryBound(to: UInt8.self), count: length)
        }
        count += length
    }

    /// The body received so far, without a copy.
    var data: Data { block?.data(count: count) ?? small }
}
