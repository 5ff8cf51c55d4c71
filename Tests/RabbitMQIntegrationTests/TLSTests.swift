import Foundation
import RabbitMQ
import Testing
import RabbitMQTestSupport

/// `amqps://` against the node of scripts/tls.sh: a working round trip, a client certificate, and each way of
/// getting TLS wrong failing at once with an error that says what is wrong.
@Suite("TLS", .enabled(if: TLSBroker.isAvailable, "RABBITMQ_TLS_URL and RABBITMQ_TLS_DIR are not set"))
struct TLSTests {
    @Test("declare, publish and consume over TLS; the broker sees a TLS connection")
    func roundTrip() async throws {
        let name = TestBroker.uniqueName("tls-round-trip")
        let configuration = try TLSBroker.configuration(name: name)
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let queue = TestBroker.uniqueName("tls")
        do {
            try await client.connect()
            let connections = try await TLSBroker.connections(named: name)
            #expect(connections.count == 1)
            #expect(connections.allSatisfy { $0.ssl }, "\(connections)")
            #expect(connections.allSatisfy { $0.peerCertificateSubject.isEmpty }, "\(connections)")

            _ = try await client.declare(Queue(queue))
            // Every byte value, and a body larger than one TLS record (16 KiB) and one frame.
            let bodies: [Data] = [Data("over TLS".utf8), Data(0...255),
                                 Data((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })]
            for body in bodies { try await client.publish(body, routingKey: queue) }
            #expect(try await TLSBroker.queueStats(queue)?.ready == bodies.count)

            var received: [Data] = []
            for try await delivery in try await client.consume(queue, prefetch: 10) {
                received.append(delivery.body)
                try delivery.ack()
                if received.count == bodies.count { break }
            }
            #expect(received == bodies)
            #expect(try await eventually {
                try await TLSBroker.queueStats(queue).map { $0.ready + $0.unacked } == 0
            })
            _ = try await client.deleteQueue(queue)
        } catch {
            _ = try? await client.deleteQueue(queue)
            await client.close()
            throw error
        }
        await client.close()
        #expect(try await eventually { try await TLSBroker.connections(named: name).isEmpty })
    }

    @Test("headers larger than a frame fail that publish over TLS too, not the connection")
    func oversizedHeaders() async throws {
        let configuration = try TLSBroker.configuration(name: TestBroker.uniqueName("tls-big-headers"))
        try await TestBroker.withClient(configuration: configuration) { client in
            try await PublishingTests.expectOversizedHeadersRefused(client)
        }
    }

    @Test("a client certificate signed by the broker's CA is presented and accepted")
    func clientCertificate() async throws {
        let name = TestBroker.uniqueName("tls-client-cert")
        var configuration = try TLSBroker.configuration(name: name)
        configuration.tls?.certificatePath = TLSBroker.file("client.pem")
        configuration.tls?.keyPath = TLSBroker.file("client.key")
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let queue = TestBroker.uniqueName("tls-cert")
        do {
            try await client.connect()
            let connections = try await TLSBroker.connections(named: name)
            #expect(connections.count == 1)
            #expect(connections.allSatisfy { $0.ssl && $0.peerCertificateSubject.contains("test client") },
                    "\(connections)")

            _ = try await client.declare(Queue(queue))
            try await client.publish(Data("with a client certificate".utf8), routingKey: queue)
            #expect(try await TLSBroker.queueStats(queue)?.ready == 1)
            let delivery = try #require(try await client.get(from: queue))
            #expect(delivery.bodyString == "with a client certificate")
            try delivery.ack()
            #expect(try await eventually {
                try await TLSBroker.queueStats(queue).map { $0.ready + $0.unacked } == 0
            })
            _ = try await client.deleteQueue(queue)
        } catch {
            _ = try? await client.deleteQueue(queue)
            await client.close()
            throw error
        }
        await client.close()
    }

    /// A way of getting TLS wrong, and what the error must say.
    struct Misconfiguration: Sendable, CustomTestStringConvertible {
        let testDescription: String
        /// Words the error message must contain.
        let mentions: [String]
        let configure: @Sendable (inout RabbitMQClient.Configuration) throws -> Void
    }

    static let misconfigurations: [Misconfiguration] = [
        Misconfiguration(testDescription: "a CA that did not sign the broker's certificate",
                         mentions: ["not trusted", "wrong-ca.pem"]) { configuration in
            configuration.tls?.caCertificatePath = TLSBroker.file("wrong-ca.pem")
        },
        Misconfiguration(testDescription: "no CA certificate file configured",
                         mentions: ["caCertificatePath"]) { configuration in
            configuration.tls?.caCertificatePath = nil
        },
        // The certificate names DNS:localhost only, and librabbitmq 0.11 does not match IP addresses.
        Misconfiguration(testDescription: "a host name the certificate does not list (127.0.0.1)",
                         mentions: ["does not name", "127.0.0.1"]) { configuration in
            configuration.endpoints = [.init(host: "127.0.0.1", port: try TLSBroker.endpoint.port)]
        },
        Misconfiguration(testDescription: "amqps:// to the plain AMQP port",
                         mentions: ["TLS handshake", "plain AMQP"]) { configuration in
            configuration.endpoints = try TestBroker.configuration.endpoints
        },
        Misconfiguration(testDescription: "a CA file that does not exist",
                         mentions: ["no-such-ca.pem"]) { configuration in
            configuration.tls?.caCertificatePath = TLSBroker.file("no-such-ca.pem")
        },
        Misconfiguration(testDescription: "a client certificate the broker's CA did not sign",
                         mentions: ["client certificate"]) { configuration in
            configuration.tls?.certificatePath = TLSBroker.file("wrong-ca-client.pem")
            configuration.tls?.keyPath = TLSBroker.file("wrong-ca-client.key")
        },
        Misconfiguration(testDescription: "a client key that does not match the certificate",
                         mentions: ["client.pem", "wrong-ca-client.key"]) { configuration in
            configuration.tls?.certificatePath = TLSBroker.file("client.pem")
            configuration.tls?.keyPath = TLSBroker.file("wrong-ca-client.key")
        },
    ]

    @Test("a TLS misconfiguration fails with tlsFailure, not retryable, before any timeout",
          arguments: misconfigurations)
    func misconfiguration(_ misconfiguration: Misconfiguration) async throws {
        var configuration = try TLSBroker.configuration(name: TestBroker.uniqueName("tls-bad"))
        try misconfiguration.configure(&configuration)
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let start = ContinuousClock.now
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        let elapsed = ContinuousClock.now - start
        await client.close()
        #expect(error?.code == .tlsFailure, "\(String(describing: error))")
        #expect(error?.isRetryable == false)
        for word in misconfiguration.mentions {
            #expect(error?.message.contains(word) == true, "\(String(describing: error)) should mention \(word)")
        }
        // Refused during the handshake, not by the connect or handshake timeout running out (that would fail
        // with `timeout`; the elapsed time is a hang guard).
        #expect(elapsed < configuration.handshakeTimeout, "took \(elapsed)")
    }

    @Test("plain amqp:// to the TLS port fails within the handshake timeout and suggests amqps://")
    func plainConnectionToTLSPort() async throws {
        var configuration = try TLSBroker.configuration(name: TestBroker.uniqueName("tls-plain"))
        configuration.tls = nil
        // The reset comes in about 30 ms; running out of this timeout would fail with `timeout`, so the elapsed
        // time below is a hang guard that only a hang reaches, also on a loaded machine.
        configuration.handshakeTimeout = .seconds(60)
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let start = ContinuousClock.now
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        let elapsed = ContinuousClock.now - start
        await client.close()
        // The TLS listener answers the AMQP header with a TLS alert and resets the connection: the connection
        // is lost during the handshake; nothing times out.
        #expect(error?.code == .connectionLost, "\(String(describing: error))")
        #expect(error?.operation == "handshake")
        #expect(error?.message.contains("amqps://") == true, "\(String(describing: error))")
        #expect(elapsed < configuration.handshakeTimeout, "took \(elapsed)")
    }

    @Test("amqps:// to a port nothing listens on fails with connectionRefused, as a plain connection does")
    func refusedPort() async throws {
        let socket = try TestSocket(listening: false)
        defer { socket.close() }
        var configuration = try TLSBroker.configuration(name: TestBroker.uniqueName("tls-refused"))
        configuration.endpoints = [.init(host: "127.0.0.1", port: socket.port)]
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        let error = await #expect(throws: RabbitMQError.self) { try await client.connect() }
        await client.close()
        #expect(error?.code == .connectionRefused, "\(String(describing: error))")
        #expect(error?.isRetryable == true)
    }
}
