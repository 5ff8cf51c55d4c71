/// The delivery tags of one channel that are settled: by the application, by automatic acknowledgement, or by
/// the I/O thread for a delivery no consumer took. It lets ``Delivery`` refuse a second settlement in the
/// settling task, before anything reaches the I/O thread, at the cost of one uncontended lock per settlement
/// and no memory per delivery.
///
/// Tags on a channel count up from 1. The settled tags are kept as disjoint, non-adjacent ranges in order, the
/// first one starting at the unused tag 0. Deliveries are mostly settled in order, so there is usually one range
/// and settling the next tag extends it; settling out of order (concurrent handlers, a delivery held while
/// later ones are acked) adds a range, which merges back once the gap before it is settled. There are never more
/// ranges than unsettled gaps between settled tags.
struct SettledTags {
    private var ranges: [ClosedRange<UInt64>] = [0...0]

    /// Whether `tag` is settled.
    func contains(_ tag: UInt64) -> Bool {
        guard tag <= ranges[ranges.count - 1].upperBound else { return false }
        return ranges[firstIndex(reaching: tag)].lowerBound <= tag
    }

    /// How many ranges hold the settled tags (at least 1).
    var rangeCount: Int { ranges.count }

    /// Marks `tag`, and with `multiple` every tag before it, settled.
    /// - Returns: `false`, changing nothing, if `tag` was settled already.
    mutating func insert(_ tag: UInt64, multiple: Bool) -> Bool {
        guard !contains(tag) else { return false }
        if multiple {
            insertThrough(tag)
        } else {
            insert(tag)
        }
        return true
    }

    private mutating func insert(_ tag: UInt64) {
        let last = ranges.count - 1
        if tag > ranges[last].upperBound {
            // The usual case: the next tag in order, or one after a gap.
            if tag == ranges[last].upperBound &+ 1 {
                ranges[last] = ranges[last].lowerBound...tag
            } else {
                ranges.append(tag...tag)
            }
            return
        }
        // Inside a gap: ranges[index - 1] ends before `tag`, ranges[index] starts after it (index >= 1, since the
        // first range starts at 0).
        let index = firstIndex(reaching: tag)
        let joinsPrevious = ranges[index - 1].upperBound &+ 1 == tag
        let joinsNext = tag &+ 1 == ranges[index].lowerBound
        switch (joinsPrevious, joinsNext) {
        case (true, true):
            ranges[index - 1] = ranges[index - 1].lowerBound...ranges[index].upperBound
            ranges.remove(at: index)
        case (true, false):
            ranges[index - 1] = ranges[index - 1].lowerBound...tag
        case (false, true):
            ranges[index] = tag...ranges[index].upperBound
        case (false, false):
            ranges.insert(tag...tag, at: index)
        }
    }

    /// Marks `tag` unsettled again (a transaction that settled it was rolled back); nothing if it is not settled.
    mutating func remove(_ tag: UInt64) {
        guard tag > 0, contains(tag) else { return }
        let index = firstIndex(reaching: tag)
        let range = ranges[index]
        var replacement: [ClosedRange<UInt64>] = []
        if range.lowerBound < tag { replacement.append(range.lowerBound...(tag - 1)) }
        if tag < range.upperBound { replacement.append((tag + 1)...range.upperBound) }
        ranges.replaceSubrange(index...index, with: replacement)
    }

    /// Settles every tag up to `tag`: the ranges that start at or right after it merge into the first.
    private mutating func insertThrough(_ tag: UInt64) {
        var upper = tag
        var merged = 0
        while merged < ranges.count, ranges[merged].lowerBound <= tag &+ 1 {
            upper = max(upper, ranges[merged].upperBound)
            merged += 1
        }
        ranges.replaceSubrange(0..<merged, with: CollectionOfOne(0...upper))
    }

    /// The index of the first range that ends at or after `tag`, which must not exceed the last range's end.
    private func firstIndex(reaching tag: UInt64) -> Int {
        var low = 0
        var high = ranges.count - 1
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < tag { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
