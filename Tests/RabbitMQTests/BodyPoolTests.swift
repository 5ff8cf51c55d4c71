import Foundation
import Testing

@testable import RabbitMQ

@Suite("Body pool")
struct BodyPoolTests {
    @Test("Blocks come in powers of two from 64 KiB; bodies too large to keep get their own size")
    func blockSizes() {
        #expect(BodyPool.blockSize(for: 65_536) == 65_536)
        #expect(BodyPool.blockSize(for: 65_537) == 131_072)
        #expect(BodyPool.blockSize(for: 1 << 20) == 1 << 20)
        #expect(BodyPool.blockSize(for: (1 << 20) + 1) == 2 << 20)
        #expect(BodyPool.blockSize(for: BodyPool.largestPooledSize) == BodyPool.largestPooledSize)
        #expect(BodyPool.blockSize(for: BodyPool.largestPooledSize + 1) == BodyPool.largestPooledSize + 1)
    }

    @Test("A block stays out of the pool while any copy of its Data lives")
    func aBodyInUseIsNotHandedOutAgain() {
        let pool = BodyPool()
        var body: Data? = pool.block(for: 1 << 20).data(count: 1 << 20)
        var copy = body
        body = nil
        #expect(pool.retainedBytes == 0)
        let other = pool.block(for: 1 << 20)
        #expect(copy!.withUnsafeBytes { $0.baseAddress } != UnsafeRawPointer(other.pointer))
        copy = nil
        #expect(pool.retainedBytes == 1 << 20)
    }

    @Test("The freed block is the one handed out next")
    func theSameMemoryIsHandedOutAgain() {
        let pool = BodyPool()
        var body: Data? = pool.block(for: 1 << 20).data(count: 1 << 20)
        let address = body!.withUnsafeBytes { $0.baseAddress }
        body = nil
        #expect(pool.retainedBytes == 1 << 20)
        let again = pool.block(for: 1 << 20)
        #expect(again.pointer == UnsafeMutableRawPointer(mutating: address))
        #expect(pool.retainedBytes == 0)
    }

    @Test("A body the application changes or grows leaves the pool's memory intact, and its block comes back")
    func anApplicationMayChangeItsBody() {
        let pool = BodyPool()
        var body: Data?
        let address: UnsafeMutableRawPointer
        do {
            let block = pool.block(for: 1 << 20)
            block.pointer.initializeMemory(as: UInt8.self, repeating: 7, count: 1 << 20)
            (body, address) = (block.data(count: 1 << 20), block.pointer)
        }
        body![0] = 1
        body!.append(contentsOf: [1, 2, 3])
        #expect(body!.count == (1 << 20) + 3)
        #expect(body![1] == 7 && body!.last == 3)
        body = nil
        #expect(pool.retainedBytes == 1 << 20)
        #expect(pool.block(for: 1 << 20).pointer == address)
    }

    @Test("A block too large to keep is freed when released")
    func largeBlocksAreNotKept() {
        let pool = BodyPool()
        _ = pool.block(for: BodyPool.largestPooledSize + 1)
        #expect(pool.retainedBytes == 0)
    }

    @Test("Each trim period frees what the period's peak use did not need, and an idle pool frees everything")
    func unusedMemoryIsGivenBack() {
        let pool = BodyPool()
        let start = ContinuousClock.now
        var inUse = (0..<8).map { _ in pool.block(for: 1 << 20) }
        pool.trim(now: start + BodyPool.trimPeriod)  // starts a period whose peak is the 8 blocks in use
        inUse.removeLast(6)
        #expect(pool.retainedBytes == 6 << 20)
        pool.trim(now: start + BodyPool.trimPeriod + .seconds(1))
        #expect(pool.retainedBytes == 6 << 20, "trimmed before the period ended")
        pool.trim(now: start + BodyPool.trimPeriod * 2)
        #expect(pool.retainedBytes == 6 << 20, "8 blocks were in use at once in the period: 6 may be needed again")
        pool.trim(now: start + BodyPool.trimPeriod * 3)
        #expect(pool.retainedBytes == 0, "no more than the 2 blocks in use were needed in the last period")
        inUse.removeAll()
        #expect(pool.retainedBytes == 2 << 20)
        pool.trim(now: start + BodyPool.trimPeriod * 4)
        #expect(pool.retainedBytes == 2 << 20, "the 2 blocks were in use during the period")
        pool.trim(now: start + BodyPool.trimPeriod * 5)
        #expect(pool.retainedBytes == 0)
    }

    @Test("A body in several frames is assembled byte for byte, small or pooled", arguments: [100, 70_000, 1 << 20])
    func bodiesAreAssembledFromFrames(size: Int) {
        let expected = Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) })
        let pool = BodyPool()
        var body = IncomingBody(size: size, pool: pool)
        var offset = 0
        while !body.isComplete {
            let length = min(40_000, size - offset, max(1, size / 3))
            expected[offset..<offset + length].withUnsafeBytes { body.append($0) }
            offset += length
        }
        #expect(body.count == size)
        #expect(body.data == expected)
    }

    @Test("A body in one frame is one Data; bytes beyond the announced size are dropped")
    func oneFrameAndOverrun() {
        let pool = BodyPool()
        var small = IncomingBody(size: 3, pool: pool)
        Data([1, 2, 3, 4]).withUnsafeBytes { small.append($0) }
        #expect(small.data == Data([1, 2, 3]))
        var large = IncomingBody(size: 65_536, pool: pool)
        Data(repeating: 9, count: 70_000).withUnsafeBytes { large.append($0) }
        #expect(large.data == Data(repeating: 9, count: 65_536))
    }

    @Test("A body dropped half-way (a lost connection) returns its block")
    func anUnfinishedBodyReturnsItsBlock() {
        let pool = BodyPool()
        var body: IncomingBody? = IncomingBody(size: 1 << 20, pool: pool)
        Data(repeating: 1, count: 1000).withUnsafeBytes { body!.append($0) }
        body = nil
        #expect(pool.retainedBytes == 1 << 20)
    }
}
