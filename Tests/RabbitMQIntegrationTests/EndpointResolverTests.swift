import Foundation
import RabbitMQ
import Testing
import RabbitMQTestSupport

/// The endpoint resolver against the shared node: asked at every connect and reconnect, its answer is what the
/// client dials, and a failing resolver only delays recovery.
@Suite("Endpoint resolver")
struct EndpointResolverTests {
    /// A resolver whose answer the test changes, counting the questions.
    final class Discovery: Sendable {
        enum Answer { case endpoints([RabbitMQClient.Configuration.Endpoint]), down }
        private let state: Locked<(answer: Answer, asked: Int)>

        init(_ answer: Answer) { state = Locked((answer, 0)) }

        var asked: Int { state.withLock { $0.asked } }
        func answer(_ answer: Answer) { state.withLock { $0.answer = answer } }

        var resolver: RabbitMQClient.Configuration.EndpointResolver {
            .init { [self] _ in
                struct DiscoveryDown: Error {}
                let answer = state.withLock { state in
                    state.asked += 1
                    return state.answer
                }
                guard case .endpoints(let endpoints) = answer else { throw DiscoveryDown() }
                return endpoints
            }
        }
    }

    @Test func theResolverIsAskedAtEveryReconnectAndAFailingOneOnlyDelaysRecovery() async throws {
        let broker = try TestBroker.configuration.endpoints[0]
        // A dead port first: unshuffled, every attempt must fall through to the answer's second endpoint.
        let discovery = Discovery(.endpoints([.init(host: "127.0.0.1", port: 1), broker]))
        let name = "resolver \(UUID().uuidString.prefix(8))"
        let queue = TestBroker.uniqueName("resolver")
        try await TestBroker.withClient(configure: { configuration in
            // Endpoints the resolver ignores: had they been dialled, the connection would be refused.
            configuration.endpoints = [.init(host: "127.0.0.1", port: 1)]
            configuration.endpointResolver = discovery.resolver
            configuration.shuffleEndpoints = false
            configuration.connectionName = name
            configuration.recovery = .init(initialDelay: .milliseconds(50), maxDelay: .milliseconds(200))
        }) { client in
            let events = EventLog.watching(client)
            #expect(discovery.asked == 1)
            _ = try await client.declare(Queue(queue, exclusive: true))

            discovery.answer(.down)
            try await TestBroker.closeConnections(named: name)
            let failedAttempts = try await eventually(timeout: .seconds(30)) { discovery.asked >= 4 }
            #expect(failedAttempts, "asked \(discovery.asked) times")
            #expect(events.recoveredCount == 0, "recovered while the resolver failed: \(events.all)")

            discovery.answer(.endpoints([.init(host: "127.0.0.1", port: 1), broker]))
            let recovered = try await eventually(timeout: .seconds(30)) { events.recoveredCount == 1 }
            #expect(recovered, "events: \(events.all)")
            #expect(events.recoveredEndpoints == [broker.description])
            try await client.publish(Data("after recovery".utf8), routingKey: queue)
            #expect(try await TestBroker.messageCount(queue) == 1)
        }
    }
}
