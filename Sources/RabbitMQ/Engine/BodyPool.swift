import Foundation
import Synchronization

/// Reuses the memory of large incoming bodies.
///
/// A large body freed to `malloc` tends to go back to the kernel (glibc trims the top of its heap), so the next
/// body of that size faults every page in again: with 1 MiB messages that cost more CPU than the rest of
/// consuming. A delivery's body is a `Data` over a block from this pool; when the application releases it, the
/// block comes back here and the I/O thread copies the next body into memory that is already mapped.
///
/// Blocks come in power-of-two sizes from ``pooledSize`` to ``largestPooledSize``. The pool never holds more than
/// the application recently had in use at once, so it does not raise the process's peak memory: every
/// ``trimPeriod`` it frees what the period's peak did not need (everything, when nothing was handed out).
final class BodyPool: Sendable {
    /// Bodies from this size on use pooled blocks; smaller ones are cheap to allocate.
    static let pooledSize = 64 * 1024
    /// Larger bodies get a block of their own size, freed when released.
    static let largestPooledSize = 16 * 1024 * 1024
    /// How often the pool gives back what it did not need.
    static let trimPeriod: Duration = .seconds(5)

    /// Memory no one else refers to: its last owner gave it up.
    private struct FreeBlock: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
    }

    private struct State {
        /// Free blocks by size.
        var free: [Int: [FreeBlock]] = [:]
        var retainedBytes = 0
        /// Bytes in blocks handed out and not yet returned.
        var outstandingBytes = 0
        /// The most bytes outstanding at once since `periodStart`.
        var periodPeak = 0
        var periodStart = ContinuousClock.now
    }

    private let state = StateLock(State())

    init() {}

    deinit {
        state.withLock { state in
            for (_, blocks) in state.free { blocks.forEach { $0.pointer.deallocate() } }
        }
    }

    /// A block of at least `size` bytes: a free one if there is one, a new one otherwise.
    func block(for size: Int) -> BodyBlock {
        let capacity = Self.blockSize(for: size)
        let reused = state.withLock { state -> UnsafeMutableRawPointer? in
            state.outstandingBytes += capacity
            state.periodPeak = max(state.periodPeak, state.outstandingBytes)
            guard let block = state.free[capacity]?.popLast() else { return nil }
            state.retainedBytes -= capacity
            return block.pointer
        }
        let pointer = reused ?? .allocate(byteCount: capacity, alignment: 16)
        return BodyBlock(pointer: pointer, capacity: capacity, pool: self)
    }

    /// Takes a block back (or frees it, if it is too large to keep).
    fileprivate func recycle(_ pointer: UnsafeMutableRawPointer, capacity: Int) {
        let kept = state.withLock { state -> Bool in
            state.outstandingBytes -= capacity
            guard capacity <= Self.largestPooledSize else { return false }
            state.free[capacity, default: []].append(FreeBlock(pointer: pointer))
            state.retainedBytes += capacity
            return true
        }
        if !kept { pointer.deallocate() }
    }

    /// At the end of each ``trimPeriod``, frees the unused blocks that the period's peak use did not need. Called
    /// by the I/O thread now and then.
    func trim(now: ContinuousClock.Instant) {
        let freed = state.withLock { state -> [FreeBlock] in
            guard now - state.periodStart >= Self.trimPeriod else { return [] }
            let needed = state.periodPeak - state.outstandingBytes
            state.periodStart = now
            state.periodPeak = state.outstandingBytes
            var freed: [FreeBlock] = []
            for size in state.free.keys.sorted(by: >) where state.retainedBytes > needed {
                while state.retainedBytes > needed, let block = state.free[size]?.popLast() {
                    freed.append(block)
                    state.retainedBytes -= size
                }
            }
            return freed
        }
        freed.forEach { $0.pointer.deallocate() }
    }

    /// The unused memory the pool holds, in bytes.
    var retainedBytes: Int { state.withLock { $0.retainedBytes } }

    /// Sizes are powers of two, so that a block serves every body of its size class; bodies too large to keep
    /// get a block of their own size.
    static func blockSize(for size: Int) -> Int {
        let rounded = max(pooledSize, 1 << (Int.bitWidth - (size - 1).leadingZeroBitCount))
        return rounded <= largestPooledSize ? rounded : size
    }
}

/// A block of a ``BodyPool``, returned to it when the last reference goes: normally when the application
/// releases the `Data` made from it, or when a connection is lost in the middle of a body.
final class BodyBlock: @unchecked Sendable {
    // Unchecked: the memory is written by the I/O thread only before the block is shared, read-only after.
    let pointer: UnsafeMutableRawPointer
    let capacity: Int
    private let pool: BodyPool

    fileprivate init(pointer: UnsafeMutableRawPointer, capacity: Int, pool: BodyPool) {
        self.pointer = pointer
        self.capacity = capacity
        self.pool = pool
    }

    deinit {
        pool.recycle(pointer, capacity: capacity)
    }

    /// The first `count` bytes as a `Data` that owns this block until it is released.
    func data(count: Int) -> Data {
        // The deallocator holds the block: when the Data's storage goes, so does the block, back to the pool.
        Data(bytesNoCopy: pointer, count: count, deallocator: .custom { _, _ in withExtendedLifetime(self) {} })
    }
}
