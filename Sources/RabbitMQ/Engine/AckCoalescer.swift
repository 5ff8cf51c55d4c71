import DequeModule

/// Tracks a channel's unsettled deliveries and turns the application's acks into as few frames as possible.
///
/// Acks arrive one per delivery; the I/O thread collects those of one pass and ``flush(_:)`` sends a single
/// `multiple` ack for the longest run of oldest deliveries that are all acked, and single acks for the rest.
/// A multiple ack is only sent for a tag that is still unsettled at the broker, and never covers a delivery
/// that the application has not settled (RabbitMQ closes the channel on an unknown delivery tag).
struct AckCoalescer {
    /// A frame to send.
    enum Frame: Equatable {
        case ack(deliveryTag: UInt64, multiple: Bool)
        case nack(deliveryTag: UInt64, multiple: Bool, requeue: Bool)
        case reject(deliveryTag: UInt64, requeue: Bool)
    }

    /// Delivered, not yet known settled, in delivery order (tags only grow on a channel).
    private var outstanding: Deque<UInt64> = []
    /// Settled at the broker but still in `outstanding` because older deliveries are not.
    private var settledOutOfOrder: Set<UInt64> = []
    /// Acked by the application, not yet sent.
    private var pendingAcks: Set<UInt64> = []

    /// Records a delivery that needs settling.
    mutating func delivered(_ tag: UInt64) {
        outstanding.append(tag)
    }

    /// Whether `tag` was delivered and is neither settled nor waiting to be sent.
    func isUnsettled(_ tag: UInt64) -> Bool {
        guard let first = outstanding.first, tag >= first, tag <= outstanding.last!,
              !settledOutOfOrder.contains(tag), !pendingAcks.contains(tag) else { return false }
        return binarySearch(tag) != nil
    }

    /// Applies the application's settlement. Returns `false` for a tag that is unknown or settled already,
    /// which the caller drops rather than letting the broker close the channel.
    mutating func settle(_ settlement: Settlement, send: (Frame) -> Void) -> Bool {
        switch settlement {
        case .ack(let tag, multiple: false):
            guard isUnsettled(tag) else { return false }
            pendingAcks.insert(tag)
        case .ack(let tag, multiple: true):
            let covered = unsettled(through: tag)
            guard !covered.isEmpty else { return false }
            pendingAcks.formUnion(covered)
        case .nack(let tag, multiple: false, let requeue):
            guard isUnsettled(tag) else { return false }
            send(.nack(deliveryTag: tag, multiple: false, requeue: requeue))
            markSettled(tag)
        case .reject(let tag, let requeue):
            guard isUnsettled(tag) else { return false }
            send(.reject(deliveryTag: tag, requeue: requeue))
            markSettled(tag)
        case .nack(let tag, multiple: true, let requeue):
            flush(send)
            let covered = unsettled(through: tag)
            guard let newest = covered.last else { return false }
            send(.nack(deliveryTag: newest, multiple: true, requeue: requeue))
            while let head = outstanding.first, head <= tag {
                outstanding.removeFirst()
                settledOutOfOrder.remove(head)
            }
        }
        return true
    }

    /// Sends the pending acks: one multiple ack for the oldest run, single acks for the others.
    mutating func flush(_ send: (Frame) -> Void) {
        guard !pendingAcks.isEmpty else { return }
        var newestInRun: UInt64?
        var ackedInRun = 0
        while let head = outstanding.first {
            if pendingAcks.remove(head) != nil {
                newestInRun = head
                ackedInRun += 1
            } else if settledOutOfOrder.remove(head) == nil {
                break
            }
            outstanding.removeFirst()
        }
        if let newestInRun {
            send(.ack(deliveryTag: newestInRun, multiple: ackedInRun > 1))
        }
        for tag in pendingAcks.sorted() {
            send(.ack(deliveryTag: tag, multiple: false))
            settledOutOfOrder.insert(tag)
        }
        pendingAcks.removeAll(keepingCapacity: true)
    }

    /// The deliveries not settled at the broker nor waiting to be, oldest first.
    var unsettledTags: [UInt64] {
        outstanding.filter { !settledOutOfOrder.contains($0) && !pendingAcks.contains($0) }
    }

    /// This state with the acks not sent yet counted unsettled: they will be sent in the transaction that begins,
    /// so a rollback of it undoes them too.
    var withoutPendingAcks: AckCoalescer {
        var copy = self
        copy.pendingAcks.removeAll()
        return copy
    }

    /// Number of deliveries not yet settled at the broker.
    var unsettledCount: Int { outstanding.count - settledOutOfOrder.count }

    private mutating func markSettled(_ tag: UInt64) {
        if outstanding.first == tag {
            outstanding.removeFirst()
            while let head = outstanding.first, settledOutOfOrder.remove(head) != nil { outstanding.removeFirst() }
        } else {
            settledOutOfOrder.insert(tag)
        }
    }

    private func unsettled(through tag: UInt64) -> [UInt64] {
        outstanding.prefix(while: { $0 <= tag }).filter { !settledOutOfOrder.contains($0) && !pendingAcks.contains($0) }
    }

    private func binarySearch(_ tag: UInt64) -> Int? {
        var low = 0
        var high = outstanding.count - 1
        while low <= high {
            let middle = (low + high) / 2
            if outstanding[middle] == tag { return middle }
            if outstanding[middle] < tag { low = middle + 1 } else { high = middle - 1 }
        }
        return nil
    }
}
