/// The arguments of stream queues, typed. They live in ``QueueArguments/extra`` (keys `x-max-age` and
/// `x-stream-max-segment-size-bytes`), so a table read back with ``QueueArguments/init(table:)`` shows them too.
extension QueueArguments {
    /// Arguments for a stream queue (`x-queue-type: stream`), with its retention limits.
    ///
    /// ```swift
    /// try await client.declare(Queue("events", arguments: .stream(maxAge: .seconds(7 * 86_400),
    ///                                                             maxLengthBytes: 10_000_000_000)))
    /// ```
    /// Retention removes whole segment files once every message in one is past a limit, so a stream holds at
    /// least what the limits say, and up to a segment more.
    /// - Parameters:
    ///   - maxAge: how long messages are kept (`x-max-age`, whole seconds). Default `nil`: no age limit.
    ///   - maxLengthBytes: the most bytes the stream keeps (`x-max-length-bytes`). Default `nil`: no size limit.
    ///   - maxSegmentSizeBytes: the size of the stream's segment files (`x-stream-max-segment-size-bytes`), the unit
    ///     retention removes. Default `nil`: the broker's default, 500 MB.
    public static func stream(maxAge: Duration? = nil, maxLengthBytes: Int? = nil,
                              maxSegmentSizeBytes: Int? = nil) -> QueueArguments
    {
        var arguments = QueueArguments(type: .stream, maxLengthBytes: maxLengthBytes)
        arguments.maxAge = maxAge
        arguments.maxSegmentSizeBytes = maxSegmentSizeBytes
        return arguments
    }

    /// How long a stream keeps messages (`x-max-age`), in whole seconds (sent as `"<seconds>s"`); reading accepts
    /// the broker's units `Y`, `M`, `D`, `h`, `m` and `s`. Default `nil`: no age limit.
    public var maxAge: Duration? {
        get { extra[StreamKey.maxAge]?.stringValue.flatMap(Self.parseAge) }
        set { extra[StreamKey.maxAge] = newValue.map { .string("\($0.components.seconds)s") } }
    }

    /// The size of a stream's segment files (`x-stream-max-segment-size-bytes`). Default `nil`: the broker's
    /// default, 500 MB.
    public var maxSegmentSizeBytes: Int? {
        get { extra[StreamKey.maxSegmentSizeBytes]?.int64Value.flatMap { Int(exactly: $0) } }
        set { extra[StreamKey.maxSegmentSizeBytes] = newValue.map { .int64(Int64($0)) } }
    }

    enum StreamKey {
        static let maxAge = "x-max-age"
        static let maxSegmentSizeBytes = "x-stream-max-segment-size-bytes"
    }

    /// `"7D"`, `"12h"`, `"90s"`… as a duration; `nil` when it is not a number followed by one of the broker's units.
    static func parseAge(_ text: String) -> Duration? {
        guard let unit = text.last, let count = Int64(text.dropLast()), count >= 0 else { return nil }
        let seconds: Int64
        switch unit {
        case "Y": seconds = 365 * 86_400
        case "M": seconds = 30 * 86_400
        case "D": seconds = 86_400
        case "h": seconds = 3600
        case "m": seconds = 60
        case "s": seconds = 1
        default: return nil
        }
        let (total, overflow) = count.multipliedReportingOverflow(by: seconds)
        return overflow ? nil : .seconds(total)
    }
}
