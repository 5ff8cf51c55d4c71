import Tracing

/// Writes trace context (W3C `traceparent`, `tracestate`, or whatever the tracer propagates) into message headers.
///
/// The library uses it on every publish; use it yourself to propagate a context into headers you build:
/// `InstrumentationSystem.tracer.inject(context, into: &properties.headers, using: FieldTableInjector())`.
public struct FieldTableInjector: Injector {
    /// Creates an injector.
    public init() {}

    /// Sets header `key` to the string `value`, replacing an earlier value.
    public func inject(_ value: String, forKey key: String, into carrier: inout FieldTable) {
        carrier[key] = .string(value)
    }
}

/// Reads trace context from message headers; the counterpart of ``FieldTableInjector``.
///
/// ``QueueWorker`` uses it for every delivery; with ``RabbitMQClient/consume(_:prefetch:options:)`` continue the
/// producer's trace with
/// `InstrumentationSystem.tracer.extract(delivery.properties.headers, into: &context, using: FieldTableExtractor())`.
public struct FieldTableExtractor: Extractor {
    /// Creates an extractor.
    public init() {}

    /// The header `key` as a string (a UTF-8 byte array counts too), or `nil`.
    public func extract(key: String, from carrier: FieldTable) -> String? {
        carrier[key]?.stringValue
    }
}
