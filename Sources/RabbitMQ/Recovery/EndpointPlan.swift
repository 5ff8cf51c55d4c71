/// Which endpoints one connection attempt tries, and in what order.
enum EndpointPlan {
    typealias Endpoint = RabbitMQClient.Configuration.Endpoint

    /// The endpoints to try for one attempt: the resolver's answer (or `configured`), without repeats, in a random
    /// order when `shuffled`.
    static func endpoints(configured: [Endpoint], resolver: RabbitMQClient.Configuration.EndpointResolver?,
                          timeout: Duration, shuffled: Bool) async throws -> [Endpoint] {
        var generator = SystemRandomNumberGenerator()
        let candidates = try await resolve(configured, with: resolver, timeout: timeout)
        return try order(candidates, shuffled: shuffled, using: &generator)
    }

    /// `candidates` without repeats, shuffled by `generator` when `shuffled`.
    /// - Throws: ``RabbitMQError/Code/hostNotFound`` when there is none.
    static func order(_ candidates: [Endpoint], shuffled: Bool, using generator: inout some RandomNumberGenerator)
        throws(RabbitMQError) -> [Endpoint]
    {
        var seen = Set<Endpoint>()
        var endpoints = candidates.filter { seen.insert($0).inserted }
        guard !endpoints.isEmpty else { throw RabbitMQError(.hostNotFound, "there is no endpoint to connect to") }
        if shuffled { endpoints.shuffle(using: &generator) }
        return endpoints
    }

    /// What `resolver` answers for `configured` within `timeout`, or `configured` without a resolver.
    static func resolve(_ configured: [Endpoint], with resolver: RabbitMQClient.Configuration.EndpointResolver?,
                        timeout: Duration) async throws -> [Endpoint] {
        guard let resolver else { return configured }
        do {
            return try await withDeadline(.now + timeout, operation: "endpoint resolution") {
                try await resolver.resolve(configured)
            }
        } catch let error as RabbitMQError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw RabbitMQError(.hostNotFound, "the endpoint resolver failed: \(error)")
        }
    }
}
