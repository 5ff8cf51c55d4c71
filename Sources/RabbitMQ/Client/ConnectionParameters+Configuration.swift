extension ConnectionParameters {
    /// The engine's settings for connecting to `endpoint` with the client's configuration, logging in with `login`
    /// (``RabbitMQClient/Configuration/loginCredentials()``).
    init(_ configuration: RabbitMQClient.Configuration, endpoint: RabbitMQClient.Configuration.Endpoint, login: Login) {
        self.init(
            endpoint: Endpoint(host: endpoint.host, port: endpoint.port), login: login,
            virtualHost: configuration.virtualHost,
            tls: configuration.tls.map {
                TLS(caCertificatePath: $0.caCertificatePath, certificatePath: $0.certificatePath, keyPath: $0.keyPath,
                    verifyPeer: $0.verifyPeer, verifyHostname: $0.verifyHostname)
            },
            connectTimeout: configuration.connectTimeout, handshakeTimeout: configuration.handshakeTimeout,
            requestTimeout: configuration.requestTimeout, heartbeat: configuration.heartbeat,
            frameMax: configuration.frameMax, channelMax: configuration.channelMax,
            connectionName: configuration.connectionName, clientProperties: configuration.clientProperties)
    }
}
