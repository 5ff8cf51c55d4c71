import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

@Suite("In-memory deduplication store")
struct DeduplicatorTests {
    private let ttl = Duration.seconds(600)

    @Test func defaultsAreTheDocumentedOnes() {
        let store = InMemoryDeduplicationStore()
        #expect(store.capacity == 100_000)
        #expect(store.retention == .seconds(86_400))
        #expect(store.count == 0)
        #expect(InMemoryDeduplicationStore(capacity: 0).capacity == 1)
        let deduplicator = Deduplicator()
        #expect(deduplicator.claimTTL == .seconds(600))
        #expect(deduplicator.inProgressDelay == .seconds(1))
    }

    @Test func aKeyIsClaimedOnceWhileInProgress() async throws {
        let store = InMemoryDeduplicationStore()
        #expect(try await store.claim("a", for: ttl) == .claimed)
        #expect(try await store.claim("a", for: ttl) == .inProgress)
        // Other keys are independent.
        #expect(try await store.claim("b", for: ttl) == .claimed)
        #expect(store.count == 0)
    }

    @Test func releaseLetsARedeliveryBeProcessed() async throws {
        let store = InMemoryDeduplicationStore()
        #expect(try await store.claim("a", for: ttl) == .claimed)
        try await store.release("a")
        #expect(try await store.claim("a", for: ttl) == .claimed)
        #expect(store.count == 0)
        // Releasing an unknown key is harmless.
        try await store.release("never-claimed")
    }

    @Test func markProcessedMakesLaterDeliveriesDuplicates() async throws {
        let store = InMemoryDeduplicationStore()
        #expect(try await store.claim("a", for: ttl) == .claimed)
        try await store.markProcessed("a")
        #expect(store.count == 1)
        #expect(try await store.claim("a", for: ttl) == .processed)
        #expect(try await store.claim("a", for: ttl) == .processed)
        // A release after the record does not forget the key.
        try await store.release("a")
        #expect(try await store.claim("a", for: ttl) == .processed)
    }

    @Test func anExpiredClaimCanBeClaimedAgain() async throws {
        let clock = MockClock()
        let store = InMemoryDeduplicationStore(capacity: 10, retention: .seconds(60), clock: clock)
        #expect(try await store.claim("a", for: .seconds(5)) == .claimed)
        clock.advance(by: .seconds(5) - .nanoseconds(1))
        #expect(try await store.claim("a", for: .seconds(5)) == .inProgress)
        clock.advance(by: .nanoseconds(1))
        // The first handler crashed: its claim expired, and a redelivery takes the key over.
        #expect(try await store.claim("a", for: .seconds(5)) == .claimed)
        #expect(try await store.claim("a", for: .seconds(5)) == .inProgress)
    }

    @Test func theOldestKeysAreForgottenBeyondCapacity() async throws {
        let store = InMemoryDeduplicationStore(capacity: 3)
        for key in ["k1", "k2", "k3", "k4", "k5"] {
            #expect(try await store.claim(key, for: ttl) == .claimed)
            try await store.markProcessed(key)
        }
        #expect(store.count == 3)
        #expect(try await store.claim("k1", for: ttl) == .claimed)
        #expect(try await store.claim("k2", for: ttl) == .claimed)
        for key in ["k3", "k4", "k5"] {
            #expect(try await store.claim(key, for: ttl) == .processed, "\(key)")
        }
    }

    @Test func evictionKeepsWorkingOverManyKeys() async throws {
        let store = InMemoryDeduplicationStore(capacity: 10)
        for index in 0..<1000 {
            #expect(try await store.claim("k\(index)", for: ttl) == .claimed)
            try await store.markProcessed("k\(index)")
            #expect(store.count == min(index + 1, 10))
        }
        for index in 990..<1000 {
            #expect(try await store.claim("k\(index)", for: ttl) == .processed)
        }
        #expect(try await store.claim("k989", for: ttl) == .claimed)
        #expect(try await store.claim("k0", for: ttl) == .claimed)
    }

    @Test func markingAKeyTwiceCountsItOnce() async throws {
        let store = InMemoryDeduplicationStore(capacity: 2)
        try await store.markProcessed("a")
        try await store.markProcessed("a")
        try await store.markProcessed("b")
        #expect(store.count == 2)
        #expect(try await store.claim("a", for: ttl) == .processed)
        #expect(try await store.claim("b", for: ttl) == .processed)
    }

    @Test func keysExpireAfterTheRetention() async throws {
        let forgetful = InMemoryDeduplicationStore(retention: .zero)
        #expect(try await forgetful.claim("a", for: ttl) == .claimed)
        try await forgetful.markProcessed("a")
        #expect(try await forgetful.claim("a", for: ttl) == .claimed)

        let clock = MockClock()
        let store = InMemoryDeduplicationStore(capacity: 10, retention: .seconds(60), clock: clock)
        try await store.markProcessed("a")
        #expect(try await store.claim("a", for: ttl) == .processed)
        clock.advance(by: .seconds(60) - .nanoseconds(1))
        #expect(try await store.claim("a", for: ttl) == .processed)
        clock.advance(by: .nanoseconds(1))
        #expect(try await store.claim("a", for: ttl) == .claimed)
    }
}
