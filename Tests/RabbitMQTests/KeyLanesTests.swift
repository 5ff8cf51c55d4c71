import Testing

@testable import RabbitMQ

@Suite("Key lanes")
struct KeyLanesTests {
    @Test func aKeysItemsStartOneAtATimeInOrder() {
        var lanes = KeyLanes<String>()
        // Mutating calls cannot be made inside #expect: each result is taken first.
        let admitted = ["a1", "a2", "b1", "a3"].map { item in lanes.admit(item, key: String(item.prefix(1))) }
        #expect(admitted == [true, false, true, false])
        #expect(lanes.busyKeys == 2 && lanes.waiting == 2)

        let afterB = lanes.next(after: "b")  // none waits: b's lane is free again
        let b2 = lanes.admit("b2", key: "b")
        let afterA = [lanes.next(after: "a"), lanes.next(after: "a"), lanes.next(after: "a")]
        let a4 = lanes.admit("a4", key: "a")
        #expect(afterB == nil && b2)
        #expect(afterA == ["a2", "a3", nil])
        #expect(a4)
        #expect(lanes.busyKeys == 2 && lanes.waiting == 0)
    }

    @Test func closingDropsTheWaitingItemsAndStartsNothingMore() {
        var lanes = KeyLanes<String>()
        for item in ["a1", "a2", "b1", "b2", "b3", "c1"] { _ = lanes.admit(item, key: String(item.prefix(1))) }
        let dropped = lanes.close()
        let next = lanes.next(after: "a")
        let admitted = lanes.admit("d1", key: "d")
        #expect(Set(dropped) == ["a2", "b2", "b3"])
        #expect(lanes.isClosed)
        #expect(next == nil && !admitted)
        #expect(lanes.busyKeys == 0 && lanes.waiting == 0)
    }

    /// The worker's use of the lanes, simulated: deliveries of 20 keys interleaved, at most 8 slots, a random slot
    /// finishing at each step. Per key, items start in delivery order and never two at once; slots are never
    /// exceeded, and a waiting item takes no slot (all 8 stay busy while enough keys have work).
    @Test func aSimulatedWorkerKeepsPerKeyOrderWithinTheLimit() {
        var generator = SeededGenerator(seed: 19)
        let limit = 8
        let deliveries = (0..<2000).map { index in (key: "k\(Int.random(in: 0..<20, using: &generator))", seq: index) }
        var lanes = KeyLanes<(key: String, seq: Int)>()
        var running: [(key: String, seq: Int)] = []
        var startedPerKey: [String: [Int]] = [:]
        var pending = deliveries[...]
        var slotWaiter: (key: String, seq: Int)?  // admitted, waiting for a slot (the consume loop)
        var fullSteps = 0

        while !pending.isEmpty || !running.isEmpty || slotWaiter != nil {
            // The consume loop: admit deliveries until one needs a slot that is not free.
            while true {
                if let waiter = slotWaiter {
                    guard running.count < limit else { break }
                    running.append(waiter)
                    slotWaiter = nil
                }
                guard let delivery = pending.popFirst() else { break }
                if lanes.admit(delivery, key: delivery.key) { slotWaiter = delivery }
            }
            for item in running where startedPerKey[item.key]?.last != item.seq {
                startedPerKey[item.key, default: []].append(item.seq)
            }
            #expect(running.count <= limit)
            #expect(Set(running.map(\.key)).count == running.count, "two of one key at once")
            if running.count == limit { fullSteps += 1 }
            guard !running.isEmpty else { continue }
            // A random handler ends; the next of its key takes its slot.
            let done = running.remove(at: Int.random(in: 0..<running.count, using: &generator))
            if let next = lanes.next(after: done.key) { running.append(next) }
        }
        let expected = Dictionary(grouping: deliveries, by: \.key).mapValues { $0.map(\.seq) }
        #expect(startedPerKey == expected)
        #expect(lanes.busyKeys == 0 && lanes.waiting == 0)
        #expect(fullSteps > 1000, "slots left idle while keys had work: \(fullSteps) full steps")
    }
}
