extension RabbitMQClient.Configuration {
    /// TLS settings for `amqps` connections. Default: verify the broker's certificate and host name
    /// against ``caCertificatePath``.
    public struct TLS: Sendable, Hashable {
        /// PEM file with the certificate authorities to trust. librabbitmq 0.11 reads no system store, so set
        /// this for verification to succeed. Default `nil`.
        public var caCertificatePath: String?
        /// PEM file with the client certificate, for brokers that require one. Default `nil`.
        public var certificatePath: String?
        /// PEM file with the client certificate's private key. Default `nil`.
        public var keyPath: String?
        /// Verify the broker's certificate chain. Default `true`.
        public var verifyPeer: Bool
        /// Verify that the certificate names the host connected to (DNS names only in librabbitmq 0.11). Default `true`.
        public var verifyHostname: Bool

        /// Creates TLS settings.
        public init(caCertificatePath: String? = nil, certificatePath: String? = nil, keyPath: String? = nil,
                    verifyPeer: Bool = true, verifyHostname: Bool = true) {
            self.caCertificatePath = caCertificatePath
            self.certificatePath = certificatePath
            self.keyPath = keyPath
            self.verifyPeer = verifyPeer
            self.verifyHostname = verifyHostname
        }
    }
}
