import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

/// The publish window's deadlines, on a test clock: a wait ends at its deadline, not a nanosecond before.
@Suite("Publish window")
struct PublishWindowTests {
    @Test func aPublisherWaitingForRoomTimesOutAtItsDeadline() async throws {
        let clock = MockClock()
        let window = PublishWindow(capacity: 1)
        // There is room: the slot is taken without a wait, so even a deadline already reached does not matter.
        try await window.acquire(deadline: clock.now, clock: clock)
        let deadline = clock.now.advanced(by: .seconds(5))
        let waiter = Task { try await window.acquire(deadline: deadline, clock: clock) }
        #expect(await clock.sleeps() == [deadline])
        clock.advance(by: .seconds(5) - .nanoseconds(1))
        // Its timer still sleeps, and nothing else can end the wait: it has not timed out.
        #expect(clock.deadlines == [deadline])
        clock.advance(by: .nanoseconds(1))
        let error = await #expect(throws: RabbitMQError.self) { try await waiter.value }
        #expect(error?.code == .timeout)
        #expect(error?.operation == "publish (waiting for room in the publish window)")
        #expect(window.inFlight == 1)
    }

    @Test func aPublisherAdmittedBeforeItsDeadlineStopsItsTimer() async throws {
        let clock = MockClock()
        let window = PublishWindow(capacity: 1)
        try await window.acquire(deadline: clock.now, clock: clock)
        let waiter = Task { try await window.acquire(deadline: clock.now.advanced(by: .seconds(5)), clock: clock) }
        await clock.sleeps()
        clock.advance(by: .seconds(4))
        window.release(1)
        try await waiter.value
        #expect(window.inFlight == 1)
        #expect(clock.deadlines.isEmpty)
    }

    @Test func waitingForConfirmsTimesOutAtItsDeadline() async throws {
        let clock = MockClock()
        let window = PublishWindow(capacity: 2)
        try await window.acquire(deadline: clock.now, clock: clock)
        let deadline = clock.now.advanced(by: .seconds(30))
        let drain = Task { try await window.waitUntilDrained(deadline: deadline, clock: clock) }
        #expect(await clock.sleeps() == [deadline])
        clock.advance(by: .seconds(30) - .nanoseconds(1))
        #expect(clock.deadlines == [deadline])
        clock.advance(by: .nanoseconds(1))
        let error = await #expect(throws: RabbitMQError.self) { try await drain.value }
        #expect(error?.code == .timeout)
        #expect(error?.operation == "waiting for publisher confirms")
    }

    @Test func waitingForConfirmsEndsWhenTheLastIsReleased() async throws {
        let clock = MockClock()
        let window = PublishWindow(capacity: 2)
        try await window.acquire(deadline: clock.now, clock: clock)
        let deadline = clock.now.advanced(by: .seconds(30))
        let drain = Task { try await window.waitUntilDrained(deadline: deadline, clock: clock) }
        await clock.sleeps()
        window.release(1)
        try await drain.value
        #expect(clock.deadlines.isEmpty)
        // Drained already: no wait, whatever the deadline.
        try await window.waitUntilDrained(deadline: clock.now, clock: clock)
    }
}
