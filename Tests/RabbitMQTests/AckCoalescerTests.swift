import Testing

@testable import RabbitMQ

@Suite("Ack coalescer")
struct AckCoalescerTests {
    typealias Frame = AckCoalescer.Frame

    /// A coalescer that has seen deliveries `tags`.
    private func coalescer(delivered tags: ClosedRange<UInt64>) -> AckCoalescer {
        var coalescer = AckCoalescer()
        for tag in tags { coalescer.delivered(tag) }
        return coalescer
    }

    /// Settles and returns whether the settlement was accepted and the frames sent at once.
    private func settle(_ coalescer: inout AckCoalescer, _ settlement: Settlement)
        -> (accepted: Bool, frames: [Frame])
    {
        var frames: [Frame] = []
        let accepted = coalescer.settle(settlement) { frames.append($0) }
        return (accepted, frames)
    }

    /// Acks each tag singly (as deliveries do) and expects every one accepted with nothing sent yet.
    private func ack(_ coalescer: inout AckCoalescer, _ tags: [UInt64],
                     sourceLocation: SourceLocation = #_sourceLocation) {
        for tag in tags {
            let (accepted, frames) = settle(&coalescer, .ack(deliveryTag: tag, multiple: false))
            #expect(accepted, "ack \(tag)", sourceLocation: sourceLocation)
            #expect(frames.isEmpty, "ack \(tag) sent \(frames) before the flush", sourceLocation: sourceLocation)
        }
    }

    private func flush(_ coalescer: inout AckCoalescer) -> [Frame] {
        var frames: [Frame] = []
        coalescer.flush { frames.append($0) }
        return frames
    }

    @Test("in-order acks of a batch become one multiple ack of the newest tag")
    func inOrderBatch() {
        var coalescer = coalescer(delivered: 1...10)
        #expect(coalescer.unsettledCount == 10)
        ack(&coalescer, Array(1...10))
        #expect(flush(&coalescer) == [.ack(deliveryTag: 10, multiple: true)])
        #expect(coalescer.unsettledCount == 0)
        #expect(flush(&coalescer).isEmpty)
    }

    @Test("a single ack goes out as a single ack, also at the head of the queue")
    func singleAck() {
        var coalescer = coalescer(delivered: 1...3)
        ack(&coalescer, [1])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 1, multiple: false)])
        ack(&coalescer, [3])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 3, multiple: false)])
        #expect(coalescer.unsettledCount == 1)
        ack(&coalescer, [2])
        // 3 is settled already: 2 alone is the run, so a single ack.
        #expect(flush(&coalescer) == [.ack(deliveryTag: 2, multiple: false)])
        #expect(coalescer.unsettledCount == 0)
    }

    @Test("out-of-order acks: a multiple ack for the contiguous oldest run, single acks for the rest")
    func outOfOrder() {
        var coalescer = coalescer(delivered: 1...8)
        ack(&coalescer, [3, 1, 7, 2, 5])
        #expect(flush(&coalescer) == [
            .ack(deliveryTag: 3, multiple: true),
            .ack(deliveryTag: 5, multiple: false),
            .ack(deliveryTag: 7, multiple: false),
        ])
        #expect(coalescer.unsettledCount == 3)
        // 4 and 6 fill the gaps: the run 4...7 skips the settled 5 and 7 and ends at 6, the newest acked now.
        ack(&coalescer, [6, 4])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 6, multiple: true)])
        #expect(coalescer.unsettledCount == 1)
        ack(&coalescer, [8])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 8, multiple: false)])
        #expect(coalescer.unsettledCount == 0)
    }

    @Test("a duplicate ack, an ack of an unknown tag and an ack after the flush are refused")
    func duplicateAckRefused() {
        var coalescer = coalescer(delivered: 5...7)
        ack(&coalescer, [5])
        #expect(settle(&coalescer, .ack(deliveryTag: 5, multiple: false)) == (false, []))
        #expect(settle(&coalescer, .ack(deliveryTag: 4, multiple: false)) == (false, []))
        #expect(settle(&coalescer, .ack(deliveryTag: 8, multiple: false)) == (false, []))
        #expect(settle(&coalescer, .ack(deliveryTag: 0, multiple: false)) == (false, []))
        #expect(flush(&coalescer) == [.ack(deliveryTag: 5, multiple: false)])
        #expect(settle(&coalescer, .ack(deliveryTag: 5, multiple: false)) == (false, []))
        #expect(settle(&coalescer, .nack(deliveryTag: 5, multiple: false, requeue: true)) == (false, []))
        #expect(settle(&coalescer, .reject(deliveryTag: 5, requeue: true)) == (false, []))
        // A tag acked out of order and flushed is refused too.
        ack(&coalescer, [7])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 7, multiple: false)])
        #expect(settle(&coalescer, .ack(deliveryTag: 7, multiple: false)) == (false, []))
        #expect(settle(&coalescer, .reject(deliveryTag: 7, requeue: false)) == (false, []))
        #expect(coalescer.unsettledCount == 1)
        #expect(flush(&coalescer).isEmpty)
    }

    @Test("nack and reject are sent at once, and their tags cannot be settled again")
    func nackAndRejectImmediate() {
        var coalescer = coalescer(delivered: 1...4)
        #expect(settle(&coalescer, .nack(deliveryTag: 2, multiple: false, requeue: true))
            == (true, [.nack(deliveryTag: 2, multiple: false, requeue: true)]))
        #expect(settle(&coalescer, .reject(deliveryTag: 3, requeue: false))
            == (true, [.reject(deliveryTag: 3, requeue: false)]))
        #expect(settle(&coalescer, .reject(deliveryTag: 1, requeue: true))
            == (true, [.reject(deliveryTag: 1, requeue: true)]))
        #expect(coalescer.unsettledCount == 1)
        #expect(settle(&coalescer, .ack(deliveryTag: 2, multiple: false)) == (false, []))
        #expect(settle(&coalescer, .nack(deliveryTag: 3, multiple: false, requeue: false)) == (false, []))
        #expect(flush(&coalescer).isEmpty)
        ack(&coalescer, [4])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 4, multiple: false)])
        #expect(coalescer.unsettledCount == 0)
    }

    @Test("a nack with multiple sends the pending acks first, then one nack for the rest")
    func nackMultipleFlushesAcksFirst() {
        var coalescer = coalescer(delivered: 1...6)
        ack(&coalescer, [1, 2, 4])
        let (accepted, frames) = settle(&coalescer, .nack(deliveryTag: 5, multiple: true, requeue: false))
        #expect(accepted)
        // 1 and 2 acked as a run, 4 singly, then the nack covers 3 and 5 (4 is settled already).
        #expect(frames == [
            .ack(deliveryTag: 2, multiple: true),
            .ack(deliveryTag: 4, multiple: false),
            .nack(deliveryTag: 5, multiple: true, requeue: false),
        ])
        #expect(coalescer.unsettledCount == 1)
        #expect(flush(&coalescer).isEmpty)
        for tag in 1...5 as ClosedRange<UInt64> {
            #expect(settle(&coalescer, .ack(deliveryTag: tag, multiple: false)) == (false, []), "tag \(tag)")
        }
        // Nothing left to nack up to 5.
        #expect(settle(&coalescer, .nack(deliveryTag: 5, multiple: true, requeue: true)) == (false, []))
        #expect(coalescer.isUnsettled(6))
    }

    @Test("a nack with multiple whose own tag is settled names the newest unsettled tag")
    func nackMultipleUsesUnsettledTag() {
        var coalescer = coalescer(delivered: 1...4)
        ack(&coalescer, [4])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 4, multiple: false)])
        #expect(settle(&coalescer, .reject(deliveryTag: 3, requeue: true)).accepted)
        let (accepted, frames) = settle(&coalescer, .nack(deliveryTag: 4, multiple: true, requeue: true))
        #expect(accepted)
        #expect(frames == [.nack(deliveryTag: 2, multiple: true, requeue: true)])
        #expect(coalescer.unsettledCount == 0)
    }

    @Test("an ack with multiple covers only the unsettled tags and names one of them")
    func ackMultipleCoversUnsettledOnly() {
        var coalescer = coalescer(delivered: 1...6)
        #expect(settle(&coalescer, .reject(deliveryTag: 2, requeue: false)).accepted)
        ack(&coalescer, [3])
        #expect(flush(&coalescer) == [.ack(deliveryTag: 3, multiple: false)])
        #expect(settle(&coalescer, .nack(deliveryTag: 6, multiple: false, requeue: true)).accepted)
        // Unsettled: 1, 4, 5. An ack of 6 with multiple covers exactly those; 6 itself is settled, so the
        // frame names 5.
        #expect(settle(&coalescer, .ack(deliveryTag: 6, multiple: true)) == (true, []))
        #expect(flush(&coalescer) == [.ack(deliveryTag: 5, multiple: true)])
        #expect(coalescer.unsettledCount == 0)
        #expect(settle(&coalescer, .ack(deliveryTag: 6, multiple: true)) == (false, []))
        #expect(settle(&coalescer, .ack(deliveryTag: 1, multiple: true)) == (false, []))
    }

    @Test("an ack with multiple leaves later deliveries unsettled")
    func ackMultipleStopsAtItsTag() {
        var coalescer = coalescer(delivered: 1...5)
        #expect(settle(&coalescer, .ack(deliveryTag: 3, multiple: true)) == (true, []))
        // Pending acks count as settled for a second settlement.
        #expect(settle(&coalescer, .ack(deliveryTag: 2, multiple: false)) == (false, []))
        #expect(settle(&coalescer, .ack(deliveryTag: 3, multiple: true)) == (false, []))
        #expect(flush(&coalescer) == [.ack(deliveryTag: 3, multiple: true)])
        #expect(coalescer.unsettledCount == 2)
        #expect(coalescer.isUnsettled(4) && coalescer.isUnsettled(5))
        #expect(!coalescer.isUnsettled(3))
    }

    /// Random settlements checked against a model of the broker: every frame must name a tag the broker holds
    /// unsettled, a multiple ack must cover only deliveries the application acked, and after each flush the
    /// broker holds exactly the deliveries the application has not settled.
    @Test("random settlements never settle a tag twice nor ack an unsettled delivery", arguments: 0..<20)
    func randomAgainstBrokerModel(seed: UInt64) {
        var random = SeededGenerator(seed: seed)
        var coalescer = AckCoalescer()
        var nextTag: UInt64 = 1
        var brokerUnsettled: Set<UInt64> = []
        var applicationSettled: [UInt64: String] = [:]   // tag: "ack" or "other"
        var delivered: [UInt64] = []

        func apply(_ frame: Frame) {
            switch frame {
            case .ack(let tag, let multiple), .nack(let tag, let multiple, _):
                #expect(brokerUnsettled.contains(tag), "seed \(seed): \(frame) names a tag the broker has settled")
                let isAck: Bool
                if case .ack = frame { isAck = true } else { isAck = false }
                let covered = multiple ? brokerUnsettled.filter { $0 <= tag } : [tag]
                for settled in covered {
                    #expect(applicationSettled[settled] != nil,
                            "seed \(seed): \(frame) settles \(settled), which the application has not settled")
                    if isAck {
                        #expect(applicationSettled[settled] == "ack", "seed \(seed): \(frame) acks nacked \(settled)")
                    }
                }
                brokerUnsettled.subtract(covered)
            case .reject(let tag, _):
                #expect(brokerUnsettled.contains(tag), "seed \(seed): \(frame) names a tag the broker has settled")
                brokerUnsettled.remove(tag)
            }
        }

        for _ in 0..<400 {
            switch random.next() % 10 {
            case 0...2:
                coalescer.delivered(nextTag)
                brokerUnsettled.insert(nextTag)
                delivered.append(nextTag)
                nextTag += 1
            case 3:
                coalescer.flush(apply)
                #expect(brokerUnsettled == Set(delivered.filter { applicationSettled[$0] == nil }), "seed \(seed)")
            default:
                guard !delivered.isEmpty else { continue }
                // Mostly tags that are still open, sometimes any tag, to exercise refusals.
                let tag = delivered[Int(random.next() % UInt64(delivered.count))]
                let wasOpen = applicationSettled[tag] == nil
                let openThrough = delivered.filter { $0 <= tag && applicationSettled[$0] == nil }
                let settlement: Settlement
                switch random.next() % 6 {
                case 0: settlement = .ack(deliveryTag: tag, multiple: true)
                case 1: settlement = .nack(deliveryTag: tag, multiple: random.next() % 2 == 0, requeue: true)
                case 2: settlement = .reject(deliveryTag: tag, requeue: false)
                default: settlement = .ack(deliveryTag: tag, multiple: false)
                }
                // Recorded before settling: the frames are sent during the call.
                let expected: Bool
                switch settlement {
                case .ack(_, multiple: true):
                    expected = !openThrough.isEmpty
                    if expected { for open in openThrough { applicationSettled[open] = "ack" } }
                case .nack(_, multiple: true, _):
                    expected = !openThrough.isEmpty
                    if expected { for open in openThrough { applicationSettled[open] = "other" } }
                case .ack:
                    expected = wasOpen
                    if expected { applicationSettled[tag] = "ack" }
                case .nack, .reject:
                    expected = wasOpen
                    if expected { applicationSettled[tag] = "other" }
                }
                let accepted = coalescer.settle(settlement, send: apply)
                #expect(accepted == expected, "seed \(seed): \(settlement)")
            }
        }
        coalescer.flush(apply)
        let open = delivered.filter { applicationSettled[$0] == nil }
        #expect(brokerUnsettled == Set(open), "seed \(seed)")
        #expect(coalescer.unsettledCount == open.count, "seed \(seed)")
    }
}
