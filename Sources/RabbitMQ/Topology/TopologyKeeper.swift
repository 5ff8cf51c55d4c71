/// A channel host that keeps what the client knows of the broker's topology: what recovery declares again, and the
/// exchanges known to exist. The client's connection manager is one.
///
/// A protocol of this folder rather than a requirement of ``ChannelHost``, so that channels, below topology, name
/// none of its types; the declarations reach it through ``Channel/topologyKeeper``.
protocol TopologyKeeper: ChannelHost {
    /// The declarations recovery repeats.
    var recorder: TopologyRecorder { get }
    /// The exchanges known to exist.
    var exchanges: KnownExchanges { get }
}

extension Channel {
    /// The host's topology bookkeeping; `nil` if the host keeps none (then declarations are not recorded).
    var topologyKeeper: (any TopologyKeeper)? { host as? any TopologyKeeper }
}
