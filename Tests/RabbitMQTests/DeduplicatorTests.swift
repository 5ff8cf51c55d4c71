import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

@Suite("In-memory deduplication store")
struct DeduplicatorTests {
    @Test func defaultsAreTheDocumentedOnes() {
        let store = InMemoryDeduplicationStore()
        #expect(store.capacity == 100_000)
        #expect(store.retention == .seconds(86_400))
        #expect(store.count == 0)
        #expect(InMemoryDeduplicationStore(capacity: 0).capacity == 1)
    }

    @Test func aKeyIsClaimedOnceWhileInProgress() async throws {
        let store = InMemoryDeduplicationStore()
        #expect(try await store.claim("a"))
        #expect(try await !store.claim("a"))
        // Other keys are independent.
        #expect(try await store.claim("b"))
        #expect(store.count == 0)
    }

    @Test func releaseLetsARedeliveryBeProcessed() async throws {
        let store = InMemoryDeduplicationStore()
        #expect(try await store.claim("a"))
        try await store.release("a")
        #expect(try await store.claim("a"))
        #expect(store.count == 0)
        // Releasing an unknown key is harmless.
        try await store.release("never-claimed")
    }

    @Test func commitMakesLaterDeliveriesDuplicates() async throws {
        let store = InMemoryDeduplicationStore()
        #expect(try await store.claim("a"))
        try await store.commit("a")
        #expect(store.count == 1)
        #expect(try await !store.claim("a"))
        #expect(try await !store.claim("a"))
        // A release after the commit does not forget the key.
        try await store.release("a")
        #expect(try await !store.claim("a"))
    }

    @Test func theOldestKeysAreForgottenBeyondCapacity() async throws {
        let store = InMemoryDeduplicationStore(capacity: 3)
        for key in ["k1", "k2", "k3", "k4", "k5"] {
            #expect(try await store.claim(key))
            try await store.commit(key)
        }
        #expect(store.count == 3)
        #expect(try await store.claim("k1"))
        #expect(try await store.claim("k2"))
        for key in ["k3", "k4", "k5"] {
            #expect(try await !store.claim(key), "\(key)")
        }
    }

    @Test func evictionKeepsWorkingOverManyKeys() async throws {
        let store = InMemoryDeduplicationStore(capacity: 10)
        for index in 0..<1000 {
            #expect(try await store.claim("k\(index)"))
            try await store.commit("k\(index)")
            #expect(store.count == min(index + 1, 10))
        }
        for index in 990..<1000 {
            #expect(try await !store.claim("k\(index)"))
        }
        #expect(try await store.claim("k989"))
        #expect(try await store.claim("k0"))
    }

    @Test func committingAKeyTwiceCountsItOnce() async throws {
        let store = InMemoryDeduplicationStore(capacity: 2)
        try await store.commit("a")
        try await store.commit("a")
        try await store.commit("b")
        #expect(store.count == 2)
        #expect(try await !store.claim("a"))
        #expect(try await !store.claim("b"))
    }

    @Test func keysExpireAfterTheRetention() async throws {
        let forgetful = InMemoryDeduplicationStore(retention: .zero)
        #expect(try await forgetful.claim("a"))
        try await forgetful.commit("a")
        #expect(try await forgetful.claim("a"))

        let clock = MockClock()
        let store = InMemoryDeduplicationStore(capacity: 10, retention: .seconds(60), clock: clock)
        try await store.commit("a")
        #expect(try await !store.claim("a"))
        clock.advance(by: .seconds(60) - .nanoseconds(1))
        #expect(try await !store.claim("a"))
        clock.advance(by: .nanoseconds(1))
        #expect(try await store.claim("a"))
    }
}
