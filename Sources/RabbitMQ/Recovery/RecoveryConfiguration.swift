/// How the client reconnects after losing its connection.
public struct RecoveryConfiguration: Sendable {
    /// Creates the default settings.
    public init() {}
}
