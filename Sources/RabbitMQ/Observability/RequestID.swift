import Tracing

/// The `ServiceContext` key of the request id that travels with messages in the `x-request-id` header.
///
/// Set it (through `ServiceContext.requestID`) around the code that publishes, and every message published
/// without an `x-request-id` of its own carries it; ``QueueWorker`` sets it while a delivery's handler runs.
public enum RequestIDKey: ServiceContextKey {
    /// The request id.
    public typealias Value = String
    /// `x-request-id`.
    public static var nameOverride: String? { MessageProperties.requestIDHeader }
}

extension ServiceContext {
    /// The request id messages published in this context carry when they have none of their own (see
    /// ``RequestIDKey``).
    public var requestID: String? {
        get { self[RequestIDKey.self] }
        set { self[RequestIDKey.self] = newValue }
    }
}

extension MessageProperties {
    /// The header that carries the request id: `x-request-id`.
    public static let requestIDHeader = "x-request-id"

    /// The request id, in the `x-request-id` header; assigning `nil` removes the header.
    ///
    /// A publish without one takes the request id of the current `ServiceContext`, if any.
    public var requestID: String? {
        get { headers.isEmpty ? nil : headers[Self.requestIDHeader]?.stringValue }
        set { headers[Self.requestIDHeader] = newValue.map { .string($0) } }
    }
}
