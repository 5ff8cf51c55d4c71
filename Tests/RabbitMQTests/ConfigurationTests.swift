import Testing

@testable import RabbitMQ

@Suite("Client configuration")
struct ConfigurationTests {
    typealias Configuration = RabbitMQClient.Configuration

    /// Checks the fields a URL never sets keep their documented defaults.
    private func expectUnsetFieldsAreDefaults(
        _ configuration: Configuration,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(configuration.handshakeTimeout == .seconds(10), sourceLocation: sourceLocation)
        #expect(configuration.requestTimeout == .seconds(20), sourceLocation: sourceLocation)
        #expect(configuration.confirmTimeout == .seconds(30), sourceLocation: sourceLocation)
        #expect(configuration.clientProperties.isEmpty, sourceLocation: sourceLocation)
        #expect(configuration.publishWindow == 1000, sourceLocation: sourceLocation)
    }

    @Test("the memberwise initializer uses the documented defaults")
    func defaults() {
        let configuration = Configuration()
        #expect(configuration.endpoints == [Configuration.Endpoint(host: "localhost", port: 5672)])
        #expect(configuration.username == "guest")
        #expect(configuration.password == "guest")
        #expect(configuration.virtualHost == "/")
        #expect(configuration.tls == nil)
        #expect(configuration.connectTimeout == .seconds(10))
        #expect(configuration.heartbeat == .seconds(30))
        #expect(configuration.frameMax == 131_072)
        #expect(configuration.channelMax == 2047)
        #expect(configuration.connectionName == nil)
        expectUnsetFieldsAreDefaults(configuration)
    }

    @Test("the initializer's arguments land in their fields")
    func explicitArguments() {
        let configuration = Configuration(host: "rabbit", port: 5673, username: "app", password: "pw", virtualHost: "v")
        #expect(configuration.endpoints == [Configuration.Endpoint(host: "rabbit", port: 5673)])
        #expect(configuration.username == "app")
        #expect(configuration.password == "pw")
        #expect(configuration.virtualHost == "v")
    }

    @Test("a minimal URL gives the same configuration as the defaults")
    func minimalURL() throws {
        let configuration = try Configuration(url: "amqp://localhost")
        #expect(configuration.endpoints == [Configuration.Endpoint(host: "localhost", port: 5672)])
        #expect(configuration.username == "guest")
        #expect(configuration.password == "guest")
        #expect(configuration.virtualHost == "/")
        #expect(configuration.tls == nil)
        #expect(configuration.connectTimeout == .seconds(10))
        #expect(configuration.heartbeat == .seconds(30))
        #expect(configuration.frameMax == 131_072)
        #expect(configuration.channelMax == 2047)
        #expect(configuration.connectionName == nil)
        expectUnsetFieldsAreDefaults(configuration)
    }

    @Test("every part of a URL maps to its field")
    func fullURL() throws {
        let configuration = try Configuration(
            url: "amqps://app%40corp:p%40ss%3Aw%2Ford@rabbit.example.com:5673/%2Forders"
                + "?heartbeat=15&connection_timeout=2500&frame_max=65536&channel_max=100"
                + "&connection_name=order%20service"
        )
        #expect(configuration.endpoints == [Configuration.Endpoint(host: "rabbit.example.com", port: 5673)])
        #expect(configuration.username == "app@corp")
        #expect(configuration.password == "p@ss:w/ord")
        #expect(configuration.virtualHost == "/orders")
        #expect(configuration.tls == RabbitMQClient.Configuration.TLS())
        #expect(configuration.heartbeat == .seconds(15))
        #expect(configuration.connectTimeout == .milliseconds(2500))
        #expect(configuration.frameMax == 65536)
        #expect(configuration.channelMax == 100)
        #expect(configuration.connectionName == "order service")
        expectUnsetFieldsAreDefaults(configuration)
    }

    @Test("amqps turns TLS on with verification, and port 5671")
    func amqpsSetsTLS() throws {
        let configuration = try Configuration(url: "amqps://rabbit.example.com/")
        let tls = try #require(configuration.tls)
        #expect(tls.verifyPeer)
        #expect(tls.verifyHostname)
        #expect(tls.caCertificatePath == nil)
        #expect(tls.certificatePath == nil)
        #expect(tls.keyPath == nil)
        #expect(configuration.endpoints == [Configuration.Endpoint(host: "rabbit.example.com", port: 5671)])
    }

    @Test("amqp leaves TLS off even on port 5671")
    func amqpLeavesTLSOff() throws {
        let configuration = try Configuration(url: "amqp://rabbit.example.com:5671/")
        #expect(configuration.tls == nil)
        #expect(configuration.endpoints.first?.port == 5671)
    }

    @Test("heartbeat=0 turns heartbeats off")
    func heartbeatZero() throws {
        #expect(try Configuration(url: "amqp://h/?heartbeat=0").heartbeat == .zero)
    }

    @Test("an IPv6 URL gives a bracket-free host")
    func ipv6() throws {
        let configuration = try Configuration(url: "amqp://[::1]:5673/")
        #expect(configuration.endpoints == [Configuration.Endpoint(host: "::1", port: 5673)])
    }

    @Test("an invalid URL throws invalidURL", arguments: [
        "http://localhost", "amqp://h:0", "amqp://h/a/b", "amqp://h/?nope=1", "amqp://h/%FF",
    ])
    func invalidURL(_ url: String) throws {
        let error = try #require(throws: RabbitMQError.self) { try Configuration(url: url) }
        #expect(error.code == .invalidURL)
        #expect(error.isRetryable == false)
    }

    @Test("an invalid URL's error hides the password", arguments: [
        "amqp://user:hunter2@h:0/", "amqp://user:hunter2@h/a/b", "amqp://user:2024?hunter2@h/",
    ])
    func invalidURLHidesPassword(_ url: String) throws {
        let error = try #require(throws: RabbitMQError.self) { try Configuration(url: url) }
        #expect(!String(describing: error).contains("hunter2"))
        #expect(!String(reflecting: error).contains("hunter2"))
    }

    // MARK: Description

    @Test("description shows scheme, user, endpoint and virtual host, and hides the password")
    func descriptionHidesPassword() throws {
        let configuration = try Configuration(url: "amqps://app:hunter2@rabbit.example.com:5673/orders")
        #expect(configuration.description == "amqps://app:***@rabbit.example.com:5673/orders")
        #expect(!"\(configuration)".contains("hunter2"))
        #expect(!String(reflecting: configuration).contains("hunter2"))
    }

    @Test("description hides the password set on a field, and lists every endpoint")
    func descriptionWithSeveralEndpoints() {
        var configuration = Configuration(username: "app", password: "hunter2", virtualHost: "orders")
        configuration.endpoints = [
            Configuration.Endpoint(host: "rabbit-1", port: 5672),
            Configuration.Endpoint(host: "rabbit-2", port: 5673),
        ]
        #expect(configuration.description == "amqp://app:***@rabbit-1:5672,rabbit-2:5673/orders")
        configuration.password = "another-secret"
        #expect(!configuration.description.contains("another-secret"))
        #expect(configuration.description.contains("***"))
    }

    @Test("description of the default configuration")
    func descriptionOfDefaults() {
        let description = Configuration().description
        #expect(description.hasPrefix("amqp://guest:***@localhost:5672/"))
        #expect(!description.contains(":guest@"))
    }

    @Test("description switches scheme with tls")
    func descriptionScheme() {
        var configuration = Configuration(host: "h", virtualHost: "v")
        #expect(configuration.description == "amqp://guest:***@h:5672/v")
        configuration.tls = RabbitMQClient.Configuration.TLS()
        #expect(configuration.description == "amqps://guest:***@h:5672/v")
    }

    @Test("an endpoint describes itself as host:port")
    func endpointDescription() {
        #expect(Configuration.Endpoint(host: "rabbit", port: 5672).description == "rabbit:5672")
    }

    @Test("TLS settings default to full verification")
    func tlsDefaults() {
        let tls = RabbitMQClient.Configuration.TLS()
        #expect(tls.verifyPeer)
        #expect(tls.verifyHostname)
        #expect(tls.caCertificatePath == nil)
        #expect(tls.certificatePath == nil)
        #expect(tls.keyPath == nil)
        let custom = RabbitMQClient.Configuration.TLS(caCertificatePath: "/ca.pem", certificatePath: "/c.pem",
                                                      keyPath: "/k.pem", verifyPeer: false, verifyHostname: false)
        #expect(custom.caCertificatePath == "/ca.pem")
        #expect(custom.certificatePath == "/c.pem")
        #expect(custom.keyPath == "/k.pem")
        #expect(!custom.verifyPeer)
        #expect(!custom.verifyHostname)
        #expect(custom != tls)
    }
}
