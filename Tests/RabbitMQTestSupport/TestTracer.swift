import Foundation
import Tracing

// MARK: - A W3C trace-context test tracer

/// The trace and span ids of a test span, carried in the `ServiceContext`.
public enum TestSpanContextKey: ServiceContextKey {
    public typealias Value = (traceID: String, spanID: String)
}

/// Records spans and propagates their context as a W3C `traceparent` header.
public final class TestTracer: Tracer, Sendable {
    /// Creates a tracer with no spans.
    public init() {}

    private let spans = Locked<[TestSpan]>([])

    /// Spans ended so far, in the order they ended.
    public var finished: [TestSpan] { spans.withLock { $0 } }

    public func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> TestSpan {
        var context = context()
        let parent = context[TestSpanContextKey.self]
        let traceID = parent?.traceID ?? Self.randomHex(bytes: 16)
        let spanID = Self.randomHex(bytes: 8)
        context[TestSpanContextKey.self] = (traceID, spanID)
        return TestSpan(operationName: operationName, kind: kind, context: context, traceID: traceID,
                                   spanID: spanID, parentSpanID: parent?.spanID) { [weak self] span in
            self?.spans.withLock { $0.append(span) }
        }
    }

    public func forceFlush() {}

    public func inject<Carrier, Inject: Injector>(_ context: ServiceContext, into carrier: inout Carrier,
                                           using injector: Inject) where Inject.Carrier == Carrier {
        guard let ids = context[TestSpanContextKey.self] else { return }
        injector.inject("00-\(ids.traceID)-\(ids.spanID)-01", forKey: "traceparent", into: &carrier)
    }

    public func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout ServiceContext,
                                              using extractor: Extract) where Extract.Carrier == Carrier {
        guard let value = extractor.extract(key: "traceparent", from: carrier) else { return }
        let parts = value.split(separator: "-")
        guard parts.count == 4, parts[1].count == 32, parts[2].count == 16 else { return }
        context[TestSpanContextKey.self] = (String(parts[1]), String(parts[2]))
    }

    private static func randomHex(bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}

/// A span of ``TestTracer``.
public final class TestSpan: Span, Sendable {
    private struct State {
        var operationName: String
        var attributes = SpanAttributes()
        var status: SpanStatus?
        var errors: [String] = []
        var ended = false
    }

    public let kind: SpanKind
    public let context: ServiceContext
    public let traceID: String
    public let spanID: String
    public let parentSpanID: String?
    private let state: Locked<State>
    private let onEnd: @Sendable (TestSpan) -> Void

    public init(operationName: String, kind: SpanKind, context: ServiceContext, traceID: String, spanID: String,
         parentSpanID: String?, onEnd: @escaping @Sendable (TestSpan) -> Void) {
        self.kind = kind
        self.context = context
        self.traceID = traceID
        self.spanID = spanID
        self.parentSpanID = parentSpanID
        self.state = Locked(State(operationName: operationName))
        self.onEnd = onEnd
    }

    public var operationName: String {
        get { state.withLock { $0.operationName } }
        set { state.withLock { $0.operationName = newValue } }
    }

    public var attributes: SpanAttributes {
        get { state.withLock { $0.attributes } }
        set { state.withLock { $0.attributes = newValue } }
    }

    public var status: SpanStatus? { state.withLock { $0.status } }
    public var errors: [String] { state.withLock { $0.errors } }
    public var isRecording: Bool { state.withLock { !$0.ended } }

    public func setStatus(_ status: SpanStatus) { state.withLock { $0.status = status } }
    public func addEvent(_ event: SpanEvent) {}
    public func addLink(_ link: SpanLink) {}

    public func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes,
                                             at instant: @autoclosure () -> Instant) {
        state.withLock { $0.errors.append("\(error)") }
    }

    public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let first = state.withLock { state -> Bool in
            defer { state.ended = true }
            return !state.ended
        }
        if first { onEnd(self) }
    }
}
