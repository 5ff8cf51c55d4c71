/// What a ``Channel`` needs from whatever manages its connection: its settings, the connection (waiting while it is
/// recovered), and whether a closed incarnation will be recovered.
///
/// The client's connection manager (in `Recovery/`) is the host of every channel; the channel holds it as this
/// protocol, so that channels name nothing of recovery and recovery re-opens channels from the outside
/// (`RecoverableChannel`).
protocol ChannelHost: AnyObject, Sendable {
    /// How long a request on the channel may wait for its reply, recovery included.
    var requestTimeout: Duration { get }
    /// How long a publish may wait for room in the window and for its confirm.
    var confirmTimeout: Duration { get }
    /// The client's metrics, tracing and logging, shared by its channels.
    var observability: Observability { get }
    /// Whether a channel closed with `error` will be brought back by recovery.
    func willRecover(from error: RabbitMQError?) -> Bool
    /// The live connection, waiting (until `deadline`) for a connection attempt or a recovery under way.
    func connection(until deadline: ContinuousClock.Instant, operation: String) async throws -> ConnectionEngine
}
