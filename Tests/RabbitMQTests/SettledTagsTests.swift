@testable import RabbitMQ
import Testing

@Suite("Settled delivery tags")
struct SettledTagsTests {
    @Test func inOrderSettlementsKeepOneRange() {
        let tags = Tags()
        for tag in UInt64(1)...1000 {
            #expect(tags.insert(tag, multiple: false))
        }
        #expect(tags.rangeCount == 1)
        #expect(tags.contains(1) && tags.contains(1000))
        #expect(!tags.contains(1001))
    }

    @Test func aSecondSettlementIsRefusedWhateverTheOrder() {
        let tags = Tags()
        #expect(tags.insert(3, multiple: false))
        #expect(!tags.insert(3, multiple: false))
        #expect(tags.insert(1, multiple: false))
        #expect(!tags.insert(1, multiple: false))
        #expect(!tags.insert(1, multiple: true))
        #expect(tags.insert(2, multiple: false))
        #expect(tags.rangeCount == 1, "1, 2 and 3 merge with the start")
        #expect(!tags.insert(2, multiple: false))
    }

    /// A rolled-back transaction's acks are removed: the deliveries can be settled again, the others stay settled.
    @Test func removedTagsCanBeSettledAgain() {
        let tags = Tags()
        for tag in UInt64(1)...10 { #expect(tags.insert(tag, multiple: false)) }
        tags.remove(5)
        tags.remove(10)
        tags.remove(1)
        tags.remove(42)  // never settled: nothing changes
        #expect(!tags.contains(1) && !tags.contains(5) && !tags.contains(10))
        #expect((2...4).allSatisfy { tags.contains($0) } && (6...9).allSatisfy { tags.contains($0) })
        #expect(tags.rangeCount == 3, "0, 2...4, 6...9")
        #expect(tags.insert(5, multiple: false) && tags.insert(1, multiple: false) && tags.insert(10, multiple: false))
        #expect(tags.rangeCount == 1)
    }

    /// A delivery held while the following ones are settled costs one range, not one entry per later delivery.
    @Test func aHeldDeliveryCostsOneRange() {
        let tags = Tags()
        #expect(tags.insert(1, multiple: false))
        for tag in UInt64(3)...10_000 {
            #expect(tags.insert(tag, multiple: false))
        }
        #expect(tags.rangeCount == 2)
        #expect(!tags.contains(2))
        #expect(tags.insert(2, multiple: false))
        #expect(tags.rangeCount == 1)
    }

    @Test func aMultipleSettlementCoversEveryEarlierTagAndMergesWhatFollows() {
        let tags = Tags()
        #expect(tags.insert(5, multiple: false))
        #expect(tags.insert(8, multiple: false))
        #expect(tags.insert(9, multiple: false))
        #expect(tags.insert(7, multiple: true))
        #expect(tags.rangeCount == 1, "1...9 are all settled")
        for tag in UInt64(1)...9 { #expect(tags.contains(tag)) }
        #expect(!tags.insert(4, multiple: false))
        #expect(!tags.insert(9, multiple: true))
        #expect(tags.insert(12, multiple: false))
        #expect(tags.insert(11, multiple: true))
        #expect(tags.rangeCount == 1)
        #expect(tags.contains(10) && tags.contains(12) && !tags.contains(13))
    }

    /// Random settlements, single and multiple, against a plain set of the settled tags.
    @Test(arguments: [1, 2, 3, 4, 5])
    func agreesWithASetOfTags(seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        let tags = Tags()
        var model = Set<UInt64>()
        let highest: UInt64 = 300
        for _ in 0..<2000 {
            let tag = UInt64.random(in: 1...highest, using: &generator)
            let multiple = Int.random(in: 0..<20, using: &generator) == 0
            let expected = !model.contains(tag)
            #expect(tags.insert(tag, multiple: multiple) == expected, "tag \(tag) multiple \(multiple)")
            if expected {
                if multiple { model.formUnion(1...tag) } else { model.insert(tag) }
            }
            #expect(tags.rangeCount <= Int(highest) / 2 + 1)
        }
        for tag in UInt64(1)...highest + 1 {
            #expect(tags.contains(tag) == model.contains(tag), "tag \(tag)")
        }
    }
}

/// The tags under test, in a class so that `#expect` can call their mutating methods.
private final class Tags {
    private var tags = SettledTags()

    func insert(_ tag: UInt64, multiple: Bool) -> Bool { tags.insert(tag, multiple: multiple) }
    func contains(_ tag: UInt64) -> Bool { tags.contains(tag) }
    var rangeCount: Int { tags.rangeCount }
    func remove(_ tag: UInt64) { tags.remove(tag) }
}
