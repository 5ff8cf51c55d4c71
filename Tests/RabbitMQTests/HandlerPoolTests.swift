import Foundation
import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

/// Holds a handler until opened, ignoring cancellation as a call that does not support it would.
private final class Gate: Sendable {
    private let state = Locked<(isOpen: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let open = state.withLock { state in
                if !state.isOpen { state.waiters.append(continuation) }
                return state.isOpen
            }
            if open { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.isOpen = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// What happened to the handlers of a test, in order.
private final class Journal: Sendable {
    private let entries = Locked<[String]>([])
    func note(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}

/// A pool on `clock` with its watch running; cancel `watch` to end it.
private func startPool(limit: Int, timeout: Duration, clock: MockClock = MockClock())
    -> (HandlerPool<MockClock>, watch: Task<Void, Never>)
{
    let pool = HandlerPool(limit: limit, timeout: timeout, clock: clock)
    return (pool, Task { await pool.watch() })
}

@Suite("Handler pool")
struct HandlerPoolTests {
    @Test func aHandlerThatEndsInTimeSettlesItsDeliveryItself() async throws {
        let (pool, watch) = startPool(limit: 2, timeout: .seconds(60))
        defer { watch.cancel() }
        let journal = Journal()
        pool.start({ id in
            journal.note("work")
            journal.note(pool.handlerReturned(id) ? "owns" : "lost")
        }, onTimeout: { journal.note("timeout") }, whenDone: { journal.note("done") })
        #expect(await pool.waitUntilIdle())
        #expect(journal.all == ["work", "owns", "done"])
    }

    @Test func aHandlerPastItsDeadlineIsCancelledAndItsDeliverySettledWithoutIt() async throws {
        let clock = MockClock()
        let start = clock.now
        let (pool, watch) = startPool(limit: 2, timeout: .seconds(10), clock: clock)
        defer { watch.cancel() }
        // With no handler, the watch sleeps one timeout ahead.
        #expect(await clock.sleeps() == [start.advanced(by: .seconds(10))])
        clock.advance(by: .seconds(3))
        let journal = Journal()
        pool.start({ id in
            do {
                try await Task.sleep(for: .seconds(60))
            } catch {
                journal.note(error is CancellationError ? "cancelled" : "failed")
            }
            journal.note(pool.handlerReturned(id) ? "owns" : "lost")
        }, onTimeout: { journal.note("timeout") }, whenDone: { journal.note("done") })
        // The watch wakes with nothing overdue, and sleeps until the handler's deadline.
        clock.advance(by: .seconds(7))
        let deadline = start.advanced(by: .seconds(13))
        #expect(await clock.sleeps() == [deadline])
        clock.advance(by: .seconds(3) - .nanoseconds(1))
        #expect(clock.deadlines == [deadline])
        #expect(journal.all.isEmpty)
        clock.advance(by: .nanoseconds(1))
        #expect(try await eventually { journal.all.count == 4 })
        #expect(Set(journal.all) == ["cancelled", "lost", "timeout", "done"])
        #expect(journal.all.firstIndex(of: "timeout")! < journal.all.firstIndex(of: "done")!)
        #expect(await pool.waitUntilIdle())
    }

    @Test func aHandlerIgnoringCancellationIsLetGoAtItsDeadlineAndFreesItsSlot() async throws {
        let clock = MockClock()
        let (pool, watch) = startPool(limit: 1, timeout: .seconds(10), clock: clock)
        defer { watch.cancel() }
        let journal = Journal()
        let gate = Gate()
        pool.start({ id in
            await gate.wait()
            journal.note(pool.handlerReturned(id) ? "owns" : "lost")
        }, onTimeout: { journal.note("timeout") }, whenDone: { journal.note("done") })
        #expect(await clock.sleeps() == [clock.now.advanced(by: .seconds(10))])
        clock.advance(by: .seconds(10))
        // Settled and counted out at the deadline, while the handler still waits: the only slot is free again.
        #expect(await pool.waitUntilIdle())
        await pool.waitForSlot()
        #expect(journal.all == ["timeout", "done"])
        gate.open()
        #expect(try await eventually { journal.all.count == 3 })
        // What the handler does afterwards does not settle anything, nor end it twice.
        #expect(journal.all == ["timeout", "done", "lost"])
    }

    @Test func noMoreThanTheLimitRunAtOnce() async throws {
        let (pool, watch) = startPool(limit: 2, timeout: .seconds(60))
        defer { watch.cancel() }
        let gates = [Gate(), Gate(), Gate()]
        let started = Locked(0)
        let starter = Task {
            for gate in gates {
                await pool.waitForSlot()
                pool.start({ _ in
                    started.withLock { $0 += 1 }
                    await gate.wait()
                }, onTimeout: {}, whenDone: {})
            }
        }
        #expect(try await eventually { started.withLock { $0 } == 2 })
        try await Task.sleep(for: .milliseconds(50))
        #expect(started.withLock { $0 } == 2)
        gates[0].open()
        #expect(try await eventually { started.withLock { $0 } == 3 })
        await starter.value
        gates[1].open()
        gates[2].open()
        #expect(await pool.waitUntilIdle())
    }

    /// A follow-up (the next delivery of a key) starts in its handler's slot: the consumer, waiting for a slot, gets
    /// none in between; the handler stays counted while it finds its follow-up.
    @Test func aFollowUpTakesItsHandlersSlot() async throws {
        let (pool, watch) = startPool(limit: 1, timeout: .seconds(60))
        defer { watch.cancel() }
        let journal = Journal()
        let gate = Gate()
        let second = HandlerPool<MockClock>.Job(work: { _ in journal.note("second") }, onTimeout: {},
                                                whenDone: { nil })
        pool.start(HandlerPool<MockClock>.Job(work: { _ in
            await gate.wait()
            journal.note("first")
        }, onTimeout: {}, whenDone: { second }))
        let consumer = Task {
            await pool.waitForSlot()
            journal.note("slot")
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(journal.all.isEmpty)
        gate.open()
        await consumer.value
        #expect(journal.all == ["first", "second", "slot"])
        #expect(await pool.waitUntilIdle())
    }

    /// A handler waiting for its follow-up (an in-process retry's backoff) is cancelled by `cancelFollowUps`;
    /// running handlers are not.
    @Test func cancellingFollowUpsLeavesRunningHandlersAlone() async throws {
        let (pool, watch) = startPool(limit: 2, timeout: .seconds(60))
        defer { watch.cancel() }
        let journal = Journal()
        let gate = Gate()
        pool.start(HandlerPool<MockClock>.Job(work: { _ in }, onTimeout: {}, whenDone: {
            journal.note("backing off")
            do { try await Task.sleep(for: .seconds(60)) } catch { journal.note("backoff cancelled") }
            return nil
        }))
        pool.start({ _ in
            await gate.wait()
            journal.note(Task.isCancelled ? "running cancelled" : "running done")
        }, onTimeout: {}, whenDone: {})
        #expect(try await eventually { journal.all == ["backing off"] })
        pool.cancelFollowUps()
        #expect(try await eventually { journal.all == ["backing off", "backoff cancelled"] })
        gate.open()
        #expect(await pool.waitUntilIdle())
        #expect(journal.all.last == "running done")
    }

    @Test func drainingTimesOutThenCancelsTheHandlers() async throws {
        let clock = MockClock()
        let (pool, watch) = startPool(limit: 2, timeout: .seconds(60), clock: clock)
        defer { watch.cancel() }
        let journal = Journal()
        pool.start({ id in
            do {
                try await Task.sleep(for: .seconds(60))
            } catch {
                journal.note(error is CancellationError ? "cancelled" : "failed")
            }
        }, onTimeout: { journal.note("timeout") }, whenDone: { journal.note("done") })
        let drainDeadline = clock.now.advanced(by: .seconds(1))
        let draining = Task { await pool.waitUntilIdle(timeout: .seconds(1)) }
        // The watch sleeps until the handler's deadline, the drain until its own.
        #expect(await clock.sleeps(count: 2) == [drainDeadline, clock.now.advanced(by: .seconds(60))])
        clock.advance(by: .seconds(1) - .nanoseconds(1))
        #expect(clock.deadlines.first == drainDeadline)
        clock.advance(by: .nanoseconds(1))
        #expect(await !draining.value)
        pool.cancelAll()
        #expect(await pool.waitUntilIdle())
        #expect(journal.all == ["cancelled", "done"])
        // Handlers started after cancelAll are cancelled too.
        pool.start({ _ in journal.note(Task.isCancelled ? "born cancelled" : "running") }, onTimeout: {},
                   whenDone: {})
        #expect(await pool.waitUntilIdle())
        #expect(journal.all.last == "born cancelled")
    }
}
