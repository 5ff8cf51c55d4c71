/// How the client reports what it does: metrics, traces and request ids.
public struct ObservabilityConfiguration: Sendable {
    /// Creates the default settings.
    public init() {}
}
