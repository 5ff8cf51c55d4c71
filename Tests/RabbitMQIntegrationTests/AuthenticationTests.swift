import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// Logging in without a password: SASL EXTERNAL with a TLS client certificate (the node of scripts/tls.sh
/// offers it, the user name being the certificate's CN).
@Suite("Authentication: EXTERNAL", .enabled(if: TLSBroker.isAvailable, "RABBITMQ_TLS_URL and RABBITMQ_TLS_DIR are not set"))
struct ExternalAuthenticationTests {
    /// The CN of scripts/tls.sh's client.pem.
    static let certificateUser = "swift-rabbitmq test client"

    /// A configuration presenting `certificate` (client.pem, nouser-client.pem…) and logging in with EXTERNAL; the
    /// configured user name and password are wrong on purpose, to show they are not used.
    static func configuration(name: String, certificate: String) throws -> RabbitMQClient.Configuration {
        var configuration = try TLSBroker.configuration(name: name)
        configuration.tls?.certificatePath = TLSBroker.file("\(certificate).pem")
        configuration.tls?.keyPath = TLSBroker.file("\(certificate).key")
        configuration.username = "not-a-user"
        configuration.password = "not-the-password"
        configuration.authentication = .externalCertificate
        return configuration
    }

    /// Adds the certificate's user with every permission on `/` (once per node; a second add is refused).
    static func addCertificateUser() async throws {
        _ = try? await TLSBroker.rabbitmqctl("add_user", certificateUser, UUID().uuidString)
        try await TLSBroker.rabbitmqctl("set_permissions", "-p", "/", certificateUser, ".*", ".*", ".*")
    }

    @Test("the client certificate alone logs in as the user its CN names, with mechanism EXTERNAL")
    func certificateLogsIn() async throws {
        try await Self.addCertificateUser()
        let name = TestBroker.uniqueName("external")
        let configuration = try Self.configuration(name: name, certificate: "client")
        try await TestBroker.withClient(configuration: configuration) { client in
            let rows = try await TLSBroker.node.connections(named: name, "user", "auth_mechanism")
            #expect(rows.count == 1)
            #expect(rows.first == [Self.certificateUser, "EXTERNAL"], "\(rows)")
            // The user's permissions apply: a round trip works.
            let queue = try await client.declare(Queue.temporary()).name
            try await client.publish(Data("as the certificate's user".utf8), routingKey: queue)
            let delivery = try #require(try await client.get(from: queue))
            #expect(delivery.bodyString == "as the certificate's user")
            try delivery.ack()
        }
    }

    @Test("a certificate whose CN names no user fails at once with authenticationFailed")
    func unknownUserIsRefused() async throws {
        let configuration = try Self.configuration(name: TestBroker.uniqueName("external-nouser"),
                                                   certificate: "nouser-client")
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let error = await #expect(throws: RabbitMQError.self) {
            try await TestBroker.withDeadline(.seconds(60)) { try await client.connect() }
        }
        #expect(error?.code == .authenticationFailed, "\(String(describing: error))")
        #expect(error?.isRetryable == false)
        #expect(error.map { "\($0)".contains("EXTERNAL") } == true, "\(String(describing: error))")
        await client.close()
    }

    @Test("EXTERNAL without a client certificate is refused before connecting")
    func externalNeedsACertificate() async throws {
        var configuration = try TLSBroker.configuration(name: TestBroker.uniqueName("external-nocert"))
        configuration.authentication = .externalCertificate
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        #expect(error?.code == .invalidArgument)
        await client.close()
    }
}

/// A credentials provider, called at every connect, so that recovery logs in with the newest secret.
@Suite("Authentication: credentials provider")
struct CredentialsProviderTests {
    @Test("after the password changes and the connection is closed, recovery logs in with the provider's new one")
    func recoveryUsesTheLatestSecret() async throws {
        let user = TestBroker.uniqueName("rotating")
        try await TestBroker.rabbitmqctl("add_user", user, "first-secret")
        try await TestBroker.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        let secret = Locked("first-secret")
        let calls = Locked(0)
        let name = TestBroker.uniqueName("provider")
        var configuration = try TestBroker.configuration
        configuration.connectionName = name
        configuration.password = "never-used"
        configuration.authentication = .credentials {
            calls.withLock { $0 += 1 }
            return .init(username: user, password: secret.withLock { $0 })
        }
        do {
            try await TestBroker.withClient(configuration: configuration) { client in
                let queue = try await client.declare(Queue(TestBroker.uniqueName("provider"))).name
                #expect(try await BrokerNode.shared.connections(named: name, "user").map { $0[0] } == [user])
                // Rotate the secret at the broker and in the provider, then drop the connection.
                try await TestBroker.rabbitmqctl("change_password", user, "second-secret")
                secret.withLock { $0 = "second-secret" }
                try await TestBroker.closeConnections(named: name)
                // The publish waits for recovery, which can only log in with the new secret.
                try await client.publish(Data("after rotation".utf8), routingKey: queue)
                #expect(try await readyCount(client, queue) == 1)
                #expect(calls.withLock { $0 } >= 2, "the provider was called \(calls.withLock { $0 }) times")
                _ = try await client.deleteQueue(queue)
            }
        } catch {
            _ = try? await TestBroker.rabbitmqctl("delete_user", user)
            throw error
        }
        try await TestBroker.rabbitmqctl("delete_user", user)
    }

    @Test("a provider that throws fails the connect with a retryable authenticationFailed")
    func failingProvider() async throws {
        struct TokenServiceDown: Error {}
        var configuration = try TestBroker.configuration
        configuration.recovery.isEnabled = false
        configuration.authentication = .credentials { throw TokenServiceDown() }
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        #expect(error?.code == .authenticationFailed)
        #expect(error?.isRetryable == true)
        await client.close()
    }
}
