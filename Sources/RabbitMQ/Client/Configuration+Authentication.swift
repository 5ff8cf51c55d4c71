extension RabbitMQClient.Configuration {
    /// How the client logs in. Default ``password``: the configuration's ``RabbitMQClient/Configuration/username``
    /// and ``RabbitMQClient/Configuration/password`` with SASL PLAIN.
    ///
    /// ```swift
    /// configuration.authentication = .externalCertificate          // the TLS client certificate is the identity
    /// configuration.authentication = .credentials {                 // asked at every connect and reconnect
    ///     .init(username: "orders", password: try await tokens.currentAccessToken())
    /// }
    /// ```
    public struct Authentication: Sendable, CustomStringConvertible {
        /// A user name and its secret (a password, or an access token for the broker's OAuth 2 backend).
        public struct Credentials: Sendable {
            /// The user name.
            public var username: String
            /// The password or token. Never logged.
            public var password: String

            /// Creates credentials.
            public init(username: String, password: String) {
                self.username = username
                self.password = password
            }
        }

        enum Method: Sendable {
            case password
            case externalCertificate
            case provider(@Sendable () async throws -> Credentials)
        }

        let method: Method

        /// SASL PLAIN with the configuration's ``RabbitMQClient/Configuration/username`` and
        /// ``RabbitMQClient/Configuration/password``. The default.
        public static let password = Authentication(method: .password)

        /// SASL EXTERNAL: the broker takes the identity from the TLS client certificate
        /// (``RabbitMQClient/Configuration/TLS/certificatePath`` and ``RabbitMQClient/Configuration/TLS/keyPath``, both
        /// required), no password is sent, and the configured user name and password are not used. The broker needs
        /// the `rabbitmq_auth_mechanism_ssl` plugin, `EXTERNAL` in its `auth_mechanisms`, and a user named after the
        /// certificate (its subject, or its CN with `ssl_cert_login_from = common_name`).
        /// A refusal fails with ``RabbitMQError/Code/authenticationFailed``; a configuration without a client
        /// certificate fails with ``RabbitMQError/Code/invalidArgument`` before connecting.
        public static let externalCertificate = Authentication(method: .externalCertificate)

        /// SASL PLAIN with credentials `provider` returns, called before every connection attempt: the first
        /// connect and each reconnect of recovery. A provider that refreshes a token (OAuth 2, JWT) keeps a
        /// recovered connection logging in with a valid one. A provider that throws fails that attempt with a
        /// retryable ``RabbitMQError/Code/authenticationFailed`` (recovery tries again after its backoff).
        public static func credentials(_ provider: @escaping @Sendable () async throws -> Credentials)
            -> Authentication
        {
            Authentication(method: .provider(provider))
        }

        public var description: String {
            switch method {
            case .password: "password"
            case .externalCertificate: "externalCertificate"
            case .provider: "credentials provider"
            }
        }
    }
}

extension RabbitMQClient.Configuration {
    /// The user name, password and SASL mechanism for the next connection attempt: the provider is asked now.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` for EXTERNAL without a client certificate; a retryable
    ///   ``RabbitMQError/Code/authenticationFailed`` when the provider throws.
    func loginCredentials() async throws(RabbitMQError) -> ConnectionParameters.Login {
        switch authentication.method {
        case .password:
            return .init(username: username, password: password, mechanism: .plain)
        case .externalCertificate:
            guard tls?.certificatePath != nil, tls?.keyPath != nil else {
                throw RabbitMQError(.invalidArgument, "authentication .externalCertificate needs TLS with a client "
                                        + "certificate and its key (tls.certificatePath, tls.keyPath)",
                                    operation: "connect")
            }
            return .init(username: "", password: "", mechanism: .external)
        case .provider(let provider):
            do {
                let credentials = try await provider()
                return .init(username: credentials.username, password: credentials.password, mechanism: .plain)
            } catch {
                throw RabbitMQError(.authenticationFailed, "the credentials provider failed: \(error)",
                                    operation: "connect", isRetryable: true)
            }
        }
    }
}
