extension RabbitMQClient.Configuration {
    /// A broker address.
    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// Host name or IP address.
        public var host: String
        /// TCP port.
        public var port: Int

        /// Creates an endpoint.
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// `host:port`, with an IPv6 address in brackets.
        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// Tells the client which endpoints to try, at every connect and reconnect: a service-discovery lookup, DNS
    /// records, or a list that changes while the client runs.
    ///
    /// ```swift
    /// configuration.endpointResolver = .init { configured in
    ///     try await discovery.rabbitMQNodes()   // [Endpoint]
    /// }
    /// ```
    /// The answer is shuffled like ``RabbitMQClient/Configuration/endpoints`` unless
    /// ``RabbitMQClient/Configuration/shuffleEndpoints`` is off. The resolver has
    /// ``RabbitMQClient/Configuration/connectTimeout`` to answer; a resolver that throws, answers late or answers
    /// with no endpoint fails that connection attempt with a retryable ``RabbitMQError/Code/hostNotFound``
    /// (``RabbitMQError/Code/timeout`` when late), so recovery asks it again at its next attempt.
    public struct EndpointResolver: Sendable {
        let resolve: @Sendable (_ configured: [Endpoint]) async throws -> [Endpoint]

        /// Creates a resolver from a function given the configured endpoints, returning those to try.
        public init(_ resolve: @escaping @Sendable (_ configured: [Endpoint]) async throws -> [Endpoint]) {
            self.resolve = resolve
        }
    }

    /// Creates a configuration for a cluster from one URL per node, such as
    /// `["amqp://app:secret@rabbit-1/orders", "amqp://app:secret@rabbit-2/orders"]`.
    ///
    /// The URLs must agree on everything but their hosts and ports (scheme, user, password, virtual host and
    /// query parameters), since one connection uses them all; a URL may itself list several hosts.
    /// - Throws: ``RabbitMQError`` with code ``RabbitMQError/Code/invalidURL`` when a URL cannot be parsed, the
    ///   list is empty, or the URLs differ in more than their hosts.
    public init(urls: [String]) throws(RabbitMQError) {
        guard let first = urls.first else { throw RabbitMQError(.invalidURL, "invalid AMQP URL list: it is empty") }
        var merged = try AMQPURL(parsing: first)
        for url in urls.dropFirst() {
            var parsed = try AMQPURL(parsing: url)
            let endpoints = parsed.endpoints
            parsed.endpoints = merged.endpoints
            guard parsed == merged else {
                // Say which part, never the URLs themselves: they may hold a password.
                throw RabbitMQError(.invalidURL, "invalid AMQP URL list: the URLs differ in more than their hosts "
                                        + "(scheme, user, password, virtual host or parameters)")
            }
            merged.endpoints += endpoints
        }
        self.init(parsed: merged)
    }
}
