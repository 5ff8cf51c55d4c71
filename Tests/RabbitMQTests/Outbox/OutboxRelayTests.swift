import Foundation
import Logging
import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

/// The outbox relay against an in-memory store and a fake publisher, on a test clock: order per aggregate key,
/// retries after failures, and a restart after a crash between a confirm and its commit.
@Suite("Outbox relay")
struct OutboxRelayTests {
    static func relay(_ store: FakeOutboxStore, _ publisher: FakePublisher, clock: MockClock,
                      batchSize: Int = 256) -> OutboxRelay {
        let retry = RabbitMQClient.Configuration.Recovery(initialDelay: .milliseconds(100), maxDelay: .seconds(1),
                                                          jitter: 0)
        return OutboxRelay(store: store, wakeup: OutboxWakeup(),
                           configuration: .init(batchSize: batchSize, pollInterval: .seconds(1), retry: retry),
                           clock: clock, logger: Logger(label: "test"), metricsFactory: nil,
                           publish: { try await publisher.publish($0) })
    }

    /// `count` events for each of `keys`, interleaved: k0 #0, k1 #0, …, k0 #1, …
    static func events(keys: [String], count: Int) -> [OutboxEvent] {
        (0..<count).flatMap { index in
            keys.map { key in
                OutboxEvent(exchange: "orders", routingKey: "order.placed", body: Data("\(key) #\(index)".utf8),
                            aggregateKey: key)
            }
        }
    }

    /// The message ids of `key`'s events in the order they were written.
    static func writtenOrder(of key: String, in store: FakeOutboxStore) -> [String] {
        store.all.filter { $0.record.event.aggregateKey == key }.map(\.record.event.messageID)
    }

    @Test func eventsOfAKeyArePublishedInOrderOneAtATimeWhileKeysPipeline() async throws {
        let store = FakeOutboxStore()
        let publisher = FakePublisher()
        let clock = MockClock()
        let relay = Self.relay(store, publisher, clock: clock, batchSize: 64)
        let run = Task { try await relay.run() }
        // Idle: the relay waits for the poll interval, which never passes on this clock; the nudge wakes it.
        await clock.sleeps()
        let keys = (0..<8).map { "order-\($0)" }
        store.enqueue(Self.events(keys: keys, count: 25))
        relay.wakeup.nudge()

        #expect(try await eventually { store.unsent.isEmpty })
        let state = publisher.state.withLock { $0 }
        #expect(state.confirmed.count == 200)
        for key in keys {
            #expect(state.confirmed.filter { $0.key == key }.map(\.messageID) == Self.writtenOrder(of: key, in: store))
        }
        #expect(state.maxInFlightPerKey == 1)
        #expect(state.maxInFlightTotal > 1)
        #expect(relay.statistics.published == 200)
        relay.stop()
        try await run.value
    }

    @Test func aFailedPublishIsRetriedAfterABackoffAndOnlyItsKeyWaits() async throws {
        let store = FakeOutboxStore()
        let publisher = FakePublisher()
        let clock = MockClock()
        store.enqueue(Self.events(keys: ["a", "b"], count: 3))
        let failuresLeft = Locked(2)
        publisher.failing.withLock {
            $0 = { event in
                event.aggregateKey == "a" && failuresLeft.withLock { left in
                    defer { left = max(left - 1, 0) }
                    return left > 0
                }
            }
        }
        let relay = Self.relay(store, publisher, clock: clock)
        let events = relay.events()
        let run = Task { try await relay.run() }

        // Round 1: a's first event fails, so a's others wait; b's are published.
        #expect(await clock.sleeps() == [clock.now.advanced(by: .milliseconds(100))])
        #expect(publisher.state.withLock { $0.confirmed.map(\.key) } == ["b", "b", "b"])
        #expect(store.unsent.map { $0.event.aggregateKey } == ["a", "a", "a"])
        #expect(store.unsent.map(\.attempts) == [1, 0, 0])
        clock.advance(by: .milliseconds(100))
        // Round 2 fails again: the pause doubles.
        #expect(await clock.sleeps() == [clock.now.advanced(by: .milliseconds(200))])
        #expect(store.unsent.map(\.attempts) == [2, 0, 0])
        clock.advance(by: .milliseconds(200))
        // Round 3 publishes a's events in order, then the relay waits for new events.
        #expect(await clock.sleeps() == [clock.now.advanced(by: .seconds(1))])
        #expect(store.unsent.isEmpty)
        let confirmed = publisher.state.withLock { $0.confirmed }
        #expect(confirmed.filter { $0.key == "a" }.map(\.messageID) == Self.writtenOrder(of: "a", in: store))
        #expect(relay.statistics == .init(published: 6, failedPublishes: 2, failedRounds: 2))
        relay.stop()
        try await run.value

        var seen: [String] = []
        for await event in events {
            switch event {
            case .published(let count): seen.append("published \(count)")
            case .publishFailed(let error, let unsent): seen.append("failed \(error.code) unsent \(unsent)")
            case .retrying(let attempt, let delay): seen.append("retrying \(attempt) after \(delay)")
            case .recovered(let rounds): seen.append("recovered after \(rounds)")
            case .storeFailed(let description): seen.append("store failed: \(description)")
            case .stopped(let error): seen.append("stopped \(error.map { "\($0)" } ?? "")")
            }
        }
        #expect(seen == [
            "failed connectionLost unsent 3", "retrying 2 after 0.1 seconds",
            "failed connectionLost unsent 3", "retrying 3 after 0.2 seconds",
            "recovered after 2", "published 3", "stopped ",
        ])
    }

    @Test func aRelayRestartedAfterACrashPublishesWhatWasNotMarkedSentWithTheSameMessageIDs() async throws {
        let store = FakeOutboxStore()
        store.enqueue(Self.events(keys: ["a", "b"], count: 5))
        // The first relay: its first batch of 4 is marked sent; the second is confirmed, then the process "dies"
        // before marking it.
        store.failMarkSentFromCall.withLock { $0 = 2 }
        let first = FakePublisher()
        let clock = MockClock()
        let crashed = Self.relay(store, first, clock: clock, batchSize: 4)
        let run = Task { try await crashed.run() }
        await clock.sleeps()  // pausing after the failed commit
        crashed.stop()
        try await run.value
        #expect(store.unsent.count == 6)
        #expect(first.state.withLock { $0.confirmed.count } == 8)

        store.failMarkSentFromCall.withLock { $0 = nil }
        let second = FakePublisher()
        let restarted = Self.relay(store, second, clock: clock, batchSize: 4)
        let rerun = Task { try await restarted.run() }
        #expect(try await eventually { store.unsent.isEmpty })
        restarted.stop()
        try await rerun.value

        let firstIDs = first.state.withLock { $0.confirmed.map(\.messageID) }
        let secondIDs = second.state.withLock { $0.confirmed.map(\.messageID) }
        let written = store.all.map(\.record.event.messageID)
        // Nothing marked sent is published again; the 4 confirmed but unmarked events are, with their ids.
        #expect(Set(secondIDs) == Set(written.suffix(6)))
        #expect(Set(firstIDs).intersection(secondIDs) == Set(written[4..<8]))
        // Each key's order holds across the restart, counting each message at its first publish.
        for key in ["a", "b"] {
            let log = (first.state.withLock { $0.confirmed } + second.state.withLock { $0.confirmed })
                .filter { $0.key == key }.map(\.messageID)
            var firstSeen: [String] = []
            for id in log where !firstSeen.contains(id) { firstSeen.append(id) }
            #expect(firstSeen == Self.writtenOrder(of: key, in: store))
        }
    }

    @Test func eventPropertiesSurviveTheirStoredForm() throws {
        let properties = MessageProperties(
            contentType: "application/json", headers: [
                "s": "text", "i": .int64(-5), "u": .uint64(.max), "d": .double(1.5), "b": true,
                "bytes": .bytes([0, 255]), "when": .timestamp(Date(timeIntervalSince1970: 1_700_000_000)),
                "nested": ["list": [1, "two"], "decimal": .decimal(FieldDecimal(scale: 2, value: 314))],
                "void": .void, "f": .float(0.25), "i8": .int8(-1), "u16": .uint16(7),
            ], deliveryMode: .persistent, priority: 3, correlationID: "c", replyTo: "r",
            expiration: .milliseconds(1500), timestamp: Date(timeIntervalSince1970: 1_700_000_001), type: "t",
            userID: "guest", appID: "app")
        let event = OutboxEvent(exchange: "x", routingKey: "k", body: Data(), properties: properties)
        #expect(!event.messageID.isEmpty)
        let decoded = try OutboxEvent.decodeProperties(try event.encodedProperties())
        #expect(decoded == event.properties)
    }
}
