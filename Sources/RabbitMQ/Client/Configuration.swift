extension RabbitMQClient {
    /// How a client connects and how long it waits. Every default is stated on its property.
    ///
    /// Build one from a URL (`amqp://user:pass@host:port/vhost`, `amqps://` for TLS) and adjust fields:
    /// ```swift
    /// var configuration = try RabbitMQClient.Configuration(url: "amqp://guest:guest@localhost:5673/")
    /// configuration.connectionName = "order-service"
    /// ```
    public struct Configuration: Sendable, CustomStringConvertible {
        /// Brokers to connect to: one entry for a single node, several for a cluster. Each connect and reconnect
        /// tries them in turn until one accepts, in a fresh random order unless ``shuffleEndpoints`` is off.
        public var endpoints: [Endpoint]
        /// Whether each connection attempt tries ``endpoints`` in a random order, so that the replicas of a
        /// service spread over a cluster's nodes instead of all landing on the first. Default `true`; turn it
        /// off to prefer the first endpoint and fall back to the others in order.
        public var shuffleEndpoints: Bool
        /// Asked at every connect and reconnect for the endpoints to try, given ``endpoints`` (service
        /// discovery, DNS records). Default `nil`: ``endpoints`` as they are; host names are resolved again at
        /// each attempt anyway.
        public var endpointResolver: EndpointResolver?
        /// User name. Default `guest`.
        public var username: String
        /// Password. Never logged nor shown in ``description``. Default `guest`.
        public var password: String
        /// Virtual host. Default `/`.
        public var virtualHost: String
        /// How the client logs in: the password above, a TLS client certificate (SASL EXTERNAL), or credentials
        /// asked for at every connect. Default ``Authentication/password``.
        public var authentication: Authentication
        /// TLS settings; `nil` for a plain TCP connection. Default `nil` (set by an `amqps://` URL).
        public var tls: TLS?
        /// Limit for the TCP connect (and the TLS handshake). Default 10 s.
        public var connectTimeout: Duration
        /// Limit for the AMQP handshake and login after the socket opens. Default 10 s.
        public var handshakeTimeout: Duration
        /// Limit for each request that waits for the broker's reply (declare, bind, qos, consume, close...).
        /// Default 20 s. When it passes, the request fails with ``RabbitMQError/Code/timeout`` and its
        /// channel is closed, since a late reply could no longer be matched.
        public var requestTimeout: Duration
        /// Limit for a publish to be confirmed, counted from the call. Default 30 s.
        public var confirmTimeout: Duration
        /// Heartbeat interval proposed to the broker; the smaller of this and the broker's wins.
        /// `.zero` turns heartbeats off. Default 30 s.
        public var heartbeat: Duration
        /// Largest frame, in bytes, proposed to the broker. Default 131072 (the broker's default).
        public var frameMax: UInt32
        /// Most channels the connection may open. Default 2047 (the broker's default).
        public var channelMax: UInt16
        /// Name shown in the management UI and `rabbitmqctl list_connections`. Default `nil`.
        public var connectionName: String?
        /// Extra client properties sent at login, next to the library's own. Default empty.
        public var clientProperties: FieldTable
        /// Unconfirmed publishes the client's own publisher (``RabbitMQClient/publish(_:to:routingKey:properties:mandatory:)``)
        /// keeps in flight across all tasks; further publishes wait. Default 1000.
        public var publishWindow: Int
        /// Reconnecting after a lost connection. Default: on, see ``Recovery``.
        public var recovery: Recovery
        /// Metrics, tracing and request ids. Default: the process-wide metrics system and tracer.
        public var observability: Observability

        /// Creates a configuration for one broker; every other field has its documented default.
        public init(host: String = "localhost", port: Int = 5672, username: String = "guest",
                    password: String = "guest", virtualHost: String = "/") {
            self.endpoints = [Endpoint(host: host, port: port)]
            self.shuffleEndpoints = true
            self.endpointResolver = nil
            self.username = username
            self.password = password
            self.virtualHost = virtualHost
            self.authentication = .password
            self.tls = nil
            self.connectTimeout = .seconds(10)
            self.handshakeTimeout = .seconds(10)
            self.requestTimeout = .seconds(20)
            self.confirmTimeout = .seconds(30)
            self.heartbeat = .seconds(30)
            self.frameMax = 131_072
            self.channelMax = 2047
            self.connectionName = nil
            self.clientProperties = [:]
            self.publishWindow = 1000
            self.recovery = Recovery()
            self.observability = Observability()
        }

        /// Creates a configuration from an AMQP URL: `amqp://user:password@host:port/vhost` or `amqps://`.
        ///
        /// The URL may list a cluster's nodes, separated by commas: `amqp://user:password@h1,h2:5673,h3/vhost`.
        /// Parts are percent-decoded; a missing user or password means `guest`, a missing port 5672
        /// (5671 for `amqps`), a missing or `/` path the default virtual host `/`. Query parameters
        /// `heartbeat` (seconds), `connection_timeout` (milliseconds), `frame_max`, `channel_max` and
        /// `connection_name` set the matching fields.
        /// - Throws: ``RabbitMQError`` with code ``RabbitMQError/Code/invalidURL`` when the URL cannot be parsed.
        public init(url: String) throws(RabbitMQError) {
            self.init(parsed: try AMQPURL(parsing: url))
        }

        init(parsed: AMQPURL) {
            self.init(username: parsed.username, password: parsed.password, virtualHost: parsed.virtualHost)
            endpoints = parsed.endpoints
            if parsed.isTLS { tls = TLS() }
            if let heartbeat = parsed.heartbeat { self.heartbeat = heartbeat }
            if let connectTimeout = parsed.connectTimeout { self.connectTimeout = connectTimeout }
            if let frameMax = parsed.frameMax { self.frameMax = frameMax }
            if let channelMax = parsed.channelMax { self.channelMax = channelMax }
            if let name = parsed.connectionName { connectionName = name }
        }

        /// The configuration with the password hidden.
        public var description: String {
            let scheme = tls == nil ? "amqp" : "amqps"
            let hosts = endpoints.map(\.description).joined(separator: ",")
            return "\(scheme)://\(username):***@\(hosts)/\(virtualHost)"
        }
    }
}
