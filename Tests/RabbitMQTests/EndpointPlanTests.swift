import Testing

@testable import RabbitMQ

/// Multi-host URLs, `Configuration(urls:)`, and the order in which a connection attempt tries endpoints.
@Suite("Endpoints")
struct EndpointPlanTests {
    typealias Configuration = RabbitMQClient.Configuration
    typealias Endpoint = Configuration.Endpoint

    static let nodes = (1...3).map { Endpoint(host: "rabbit-\($0)", port: 5672) }

    // MARK: Several hosts in one URL

    @Test func aURLListsSeveralHostsEachWithItsOwnOrTheDefaultPort() throws {
        let configuration = try Configuration(url: "amqps://app:secret@rabbit-1,rabbit-2:5681,[::1]:5682/orders")
        #expect(configuration.endpoints == [
            Endpoint(host: "rabbit-1", port: 5671), Endpoint(host: "rabbit-2", port: 5681),
            Endpoint(host: "::1", port: 5682),
        ])
        #expect(configuration.username == "app" && configuration.password == "secret")
        #expect(configuration.virtualHost == "orders" && configuration.tls != nil)
        #expect(configuration.description == "amqps://app:***@rabbit-1:5671,rabbit-2:5681,[::1]:5682/orders")
    }

    @Test(arguments: ["amqp://a,,b/", "amqp://a,/", "amqp://,b/", "amqp://a,b:0/", "amqp://a,[::1/"])
    func aBadHostListIsRefused(url: String) {
        #expect(throws: RabbitMQError.self) { try Configuration(url: url) }
        #expect((try? Configuration(url: url)) == nil)
    }

    // MARK: One URL per node

    @Test func urlsMergeIntoOneConfigurationWithEveryHost() throws {
        let configuration = try Configuration(urls: [
            "amqp://app:secret@rabbit-1:5681/orders?heartbeat=5", "amqp://app:secret@rabbit-2:5682,rabbit-3/orders?heartbeat=5",
        ])
        #expect(configuration.endpoints == [
            Endpoint(host: "rabbit-1", port: 5681), Endpoint(host: "rabbit-2", port: 5682),
            Endpoint(host: "rabbit-3", port: 5672),
        ])
        #expect(configuration.heartbeat == .seconds(5) && configuration.virtualHost == "orders")
        #expect(configuration.shuffleEndpoints)
    }

    @Test(arguments: [
        "amqps://app:secret@rabbit-2/orders", "amqp://other:secret@rabbit-2/orders",
        "amqp://app:hunter2@rabbit-2/orders", "amqp://app:secret@rabbit-2/billing",
        "amqp://app:secret@rabbit-2/orders?heartbeat=9",
    ])
    func urlsThatDifferInMoreThanTheirHostsAreRefusedWithoutEchoingThem(other: String) {
        do {
            _ = try Configuration(urls: ["amqp://app:secret@rabbit-1/orders", other])
            Issue.record("\(other) was accepted")
        } catch {
            #expect(error.code == .invalidURL)
            #expect(!error.message.contains("secret") && !error.message.contains("hunter2"))
        }
    }

    @Test func anEmptyURLListIsRefused() {
        #expect(throws: RabbitMQError.self) { try Configuration(urls: []) }
    }

    // MARK: The order of one attempt

    @Test func withoutShufflingTheConfiguredOrderIsKeptAndRepeatsDropped() throws {
        var generator = SeededGenerator(seed: 1)
        let candidates = Self.nodes + [Self.nodes[0]]
        #expect(try EndpointPlan.order(candidates, shuffled: false, using: &generator) == Self.nodes)
    }

    @Test func shufflingSpreadsTheFirstEndpointOverEveryNode() throws {
        var generator = SeededGenerator(seed: 42)
        var firsts: [Endpoint: Int] = [:]
        for _ in 0..<3000 {
            let order = try EndpointPlan.order(Self.nodes, shuffled: true, using: &generator)
            #expect(Set(order) == Set(Self.nodes) && order.count == 3)
            firsts[order[0], default: 0] += 1
        }
        // Each node comes first about 1000 times in 3000 draws; 800 is more than 6 standard deviations off.
        for node in Self.nodes { #expect(firsts[node, default: 0] > 800, "\(firsts)") }
    }

    @Test func noEndpointIsARetryableHostNotFound() {
        var generator = SeededGenerator(seed: 1)
        #expect {
            try EndpointPlan.order([], shuffled: true, using: &generator)
        } throws: { error in
            (error as? RabbitMQError)?.code == .hostNotFound && (error as? RabbitMQError)?.isRetryable == true
        }
    }

    // MARK: The resolver

    @Test func theResolverIsGivenTheConfiguredEndpointsAndItsAnswerIsTried() async throws {
        let resolver = Configuration.EndpointResolver { configured in
            configured.map { Endpoint(host: $0.host + ".internal", port: $0.port + 1) }
        }
        let endpoints = try await EndpointPlan.endpoints(
            configured: Self.nodes, resolver: resolver, timeout: .seconds(5), shuffled: false)
        #expect(endpoints.map(\.description) == ["rabbit-1.internal:5673", "rabbit-2.internal:5673",
                                                  "rabbit-3.internal:5673"])
    }

    @Test func aFailingResolverIsARetryableHostNotFound() async {
        struct DiscoveryDown: Error {}
        let resolver = Configuration.EndpointResolver { _ in throw DiscoveryDown() }
        await #expect {
            try await EndpointPlan.endpoints(configured: Self.nodes, resolver: resolver, timeout: .seconds(5),
                                             shuffled: true)
        } throws: { error in
            guard let error = error as? RabbitMQError else { return false }
            return error.code == .hostNotFound && error.isRetryable && error.message.contains("DiscoveryDown")
        }
    }

    @Test func anEmptyAnswerIsARetryableHostNotFound() async {
        let resolver = Configuration.EndpointResolver { _ in [] }
        await #expect {
            try await EndpointPlan.endpoints(configured: Self.nodes, resolver: resolver, timeout: .seconds(5),
                                             shuffled: true)
        } throws: { error in
            (error as? RabbitMQError)?.code == .hostNotFound
        }
    }

    @Test func aResolverThatDoesNotAnswerInTimeFailsWithATimeout() async {
        let resolver = Configuration.EndpointResolver { configured in
            try await Task.sleep(for: .seconds(600))
            return configured
        }
        let clock = ContinuousClock()
        let start = clock.now
        await #expect {
            try await EndpointPlan.endpoints(configured: Self.nodes, resolver: resolver,
                                             timeout: .milliseconds(100), shuffled: true)
        } throws: { error in
            (error as? RabbitMQError)?.code == .timeout
        }
        // Bounded by the timeout, not the resolver's 600 s (a generous margin for a loaded machine).
        #expect(clock.now - start < .seconds(60))
    }
}
