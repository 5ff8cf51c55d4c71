import DequeModule

/// The lanes of a ``QueueWorker`` with ``QueueWorker/Configuration/ordering``: one per key that has a delivery
/// running, holding the deliveries of that key that wait for it, in delivery order.
///
/// A delivery whose lane is free starts (once a handler slot is free); one whose lane is busy waits in it, without
/// a slot, and starts, in the slot of the one before it, when that one is settled. So deliveries of one key run one
/// at a time in delivery order, and different keys run side by side. A value type without I/O, so that its rules
/// are tested alone; the worker keeps it behind a lock.
struct KeyLanes<Item> {
    /// The busy lanes: a key is present while one of its items runs (or is about to), with the items behind it.
    private var lanes: [String: Deque<Item>] = [:]
    /// Whether ``close()`` was called.
    private(set) var isClosed = false

    /// Keys with an item running.
    var busyKeys: Int { lanes.count }
    /// Items waiting behind another of their key.
    var waiting: Int { lanes.values.reduce(0) { $0 + $1.count } }

    /// Takes `item` of `key`: `true` if its lane was free and it may start now (the lane is busy from now on), `false`
    /// if it waits behind the lane's items, or the lanes are closed.
    mutating func admit(_ item: Item, key: String) -> Bool {
        guard !isClosed else { return false }
        guard lanes[key] != nil else {
            lanes[key] = []
            return true
        }
        lanes[key]!.append(item)
        return false
    }

    /// The item of `key` that ran is settled: returns the next one of its lane, which starts now (the lane stays
    /// busy), or `nil` when none waits (the lane is free again) or the lanes are closed.
    mutating func next(after key: String) -> Item? {
        guard let waiting = lanes[key], !waiting.isEmpty, !isClosed else {
            lanes[key] = nil
            return nil
        }
        return lanes[key]!.removeFirst()
    }

    /// Starts nothing more: returns the items that were waiting (they are not run), and every later ``next(after:)``
    /// returns `nil`.
    mutating func close() -> [Item] {
        isClosed = true
        let waiting = lanes.values.flatMap { $0 }
        lanes = [:]
        return waiting
    }
}
