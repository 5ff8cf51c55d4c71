import Foundation
import Synchronization

/// Where a consumer of a stream queue starts reading (the `x-stream-offset` consumer argument).
///
/// A stream keeps its messages after they are consumed; each consumer chooses where in the log it starts:
/// ```swift
/// let consumer = try await client.consume("events", prefetch: 100,
///                                         options: ConsumeOptions(streamOffset: .first))
/// ```
/// Set it through ``ConsumeOptions/streamOffset`` or ``QueueWorker/Configuration/streamOffset``; either also makes
/// the library track the last offset it handed out, so that connection recovery resumes from the message after it.
public enum StreamOffset: Sendable, Hashable, CustomStringConvertible {
    /// The first message still in the stream.
    case first
    /// The last chunk written (the broker starts at a chunk boundary, so a few earlier messages may come too).
    case last
    /// Only messages published after the consumer starts. The broker's default.
    case next
    /// The message at this offset (offsets count from 0 and only grow); an offset past the end waits for it, one
    /// before the first kept starts at the first.
    case offset(Int64)
    /// The first chunk written at or after this time (one-second resolution; messages from the same chunk written
    /// a little earlier may come too).
    case timestamp(Date)
    /// Messages written within this long before the consumer starts (whole seconds, at least one), like
    /// ``timestamp(_:)`` with now minus the interval, computed by the broker.
    case interval(Duration)

    /// The offset after a stored one: to resume from the message after the last one the application processed.
    public static func after(_ offset: Int64) -> StreamOffset {
        .offset(offset == .max ? offset : offset + 1)
    }

    /// The value sent as `x-stream-offset`: a string for `first`, `last`, `next` and intervals (`"90s"`), a 64-bit
    /// integer for an offset, an AMQP timestamp for a time.
    public var argument: FieldValue {
        switch self {
        case .first: "first"
        case .last: "last"
        case .next: "next"
        case .offset(let offset): .int64(offset)
        case .timestamp(let date): .timestamp(date)
        case .interval(let interval): .string("\(interval.components.seconds)s")
        }
    }

    public var description: String {
        switch self {
        case .first, .last, .next: argument.stringValue ?? ""
        case .offset(let offset): "offset \(offset)"
        case .timestamp(let date): "timestamp \(date)"
        case .interval(let interval): "interval \(interval)"
        }
    }

    /// Checks what the broker would refuse (it closes the channel with 406).
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` for a negative offset or an interval under one second.
    func validate(operation: String) throws(RabbitMQError) {
        switch self {
        case .offset(let offset) where offset < 0:
            throw RabbitMQError(.invalidArgument, "a stream offset is at least 0, not \(offset)", operation: operation)
        case .interval(let interval) where interval.components.seconds < 1:
            throw RabbitMQError(.invalidArgument, "a stream offset interval is at least one second, not \(interval)",
                                operation: operation)
        default:
            return
        }
    }
}

/// Where a stream consumer is: the offset of the last delivery handed to the application. Recovery and a
/// ``QueueWorker`` subscribing again start from the one after it, so that no message is read twice or skipped.
///
/// A delivery counts once the consumer's sequence returns it: deliveries still buffered when the channel closed
/// were never handed out and are read again. Updated by the one task iterating the consumer, read by recovery.
final class StreamCursor: Sendable {
    /// Where the first subscription starts.
    let initial: StreamOffset
    /// The last offset handed out; -1 before the first (stream offsets start at 0).
    private let last = Atomic<Int64>(-1)

    init(initial: StreamOffset) {
        self.initial = initial
    }

    /// The offset of the last delivery handed out, if any.
    var lastOffset: Int64? {
        let last = last.load(ordering: .acquiring)
        return last < 0 ? nil : last
    }

    /// Records a delivery handed out.
    func advance(to offset: Int64) {
        last.store(offset, ordering: .releasing)
    }

    /// Where to start consuming now: after the last delivery handed out, or the initial offset before any.
    var resumeOffset: StreamOffset {
        lastOffset.map(StreamOffset.after) ?? initial
    }
}

extension Delivery {
    /// The message's offset in its stream (the `x-stream-offset` header the broker adds to each delivery from a
    /// stream queue); `nil` for a message from another kind of queue. Store it to resume after a restart with
    /// ``StreamOffset/after(_:)``.
    public var streamOffset: Int64? {
        properties.headers[StreamCursor.header]?.int64Value
    }
}

extension StreamCursor: ConsumerResumption {
    /// The consumer argument and the delivery header.
    static let header = "x-stream-offset"

    /// The recorded arguments with the offset to resume from (``resumeOffset``).
    func arguments(resuming recorded: FieldTable) -> FieldTable {
        var arguments = recorded
        arguments[Self.header] = resumeOffset.argument
        return arguments
    }
}
