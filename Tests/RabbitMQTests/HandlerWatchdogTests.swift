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

/// A watchdog with its watch running; cancel `watch` to end it.
private func startWatchdog(timeout: Duration) -> (HandlerWatchdog, watch: Task<Void, Never>) {
    let watchdog = HandlerWatchdog(timeout: timeout)
    return (watchdog, Task { await watchdog.watch() })
}

/// Waits until `condition` holds, checking every 10 ms, at most 10 s (a hang guard).
private func eventually(_ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// The error of a handler reported as failed, or `nil` for any other verdict.
private func failure(_ verdict: HandlerWatchdog.Verdict) -> (any Error)? {
    if case .finished(.failure(let error)) = verdict { error } else { nil }
}

/// Whether the verdict is a timeout.
private func isTimeout(_ verdict: HandlerWatchdog.Verdict) -> Bool {
    if case .timedOut = verdict { true } else { false }
}

@Suite("Handler watchdog")
struct HandlerWatchdogTests {
    @Test func aHandlerThatEndsInTimeReportsWhatItReturnedOrThrew() async throws {
        let (watchdog, watch) = startWatchdog(timeout: .seconds(60))
        defer { watch.cancel() }
        let returned = await watchdog.run {}
        if case .finished(.success) = returned {} else { Issue.record("a handler that returned: \(returned)") }
        let threw = await watchdog.run { throw RetryableError("boom") }
        #expect((failure(threw) as? RetryableError)?.reason == "boom")
    }

    @Test func aHandlerPastItsDeadlineIsCancelledAndReportedTimedOut() async throws {
        let (watchdog, watch) = startWatchdog(timeout: .milliseconds(100))
        defer { watch.cancel() }
        let sawCancellation = Locked(false)
        let verdict = await watchdog.run {
            do {
                try await Task.sleep(for: .seconds(60))
            } catch {
                sawCancellation.withLock { $0 = error is CancellationError }
                throw error
            }
        }
        #expect(isTimeout(verdict))
        // The handler's own task was cancelled; it ends on its own soon after.
        #expect(try await eventually { sawCancellation.withLock { $0 } })
    }

    @Test func aHandlerIgnoringCancellationIsReportedTimedOutWithoutWaitingForIt() async throws {
        let (watchdog, watch) = startWatchdog(timeout: .milliseconds(100))
        defer { watch.cancel() }
        let gate = Gate()
        let returned = Locked(false)
        let verdict = await watchdog.run {
            await gate.wait()
            returned.withLock { $0 = true }
        }
        #expect(isTimeout(verdict))
        #expect(!returned.withLock { $0 })
        gate.open()
        #expect(try await eventually { returned.withLock { $0 } })
    }

    @Test func cancellingTheCallerCancelsTheHandler() async throws {
        let (watchdog, watch) = startWatchdog(timeout: .seconds(60))
        defer { watch.cancel() }
        let started = Locked(false)
        let caller = Task {
            await watchdog.run {
                started.withLock { $0 = true }
                try await Task.sleep(for: .seconds(60))
            }
        }
        #expect(try await eventually { started.withLock { $0 } })
        caller.cancel()
        #expect(failure(await caller.value) is CancellationError)
    }

    @Test func theEndOfTheWatchLetsGoOfHandlersAndRefusesNewOnes() async throws {
        let (watchdog, watch) = startWatchdog(timeout: .seconds(60))
        let gate = Gate()
        let started = Locked(false)
        let running = Task {
            await watchdog.run {
                started.withLock { $0 = true }
                await gate.wait()
            }
        }
        #expect(try await eventually { started.withLock { $0 } })
        watch.cancel()
        await watch.value
        // Let go at once, although the handler (which ignores cancellation) still waits.
        #expect(failure(await running.value) is CancellationError)
        let ran = Locked(false)
        let refused = await watchdog.run { ran.withLock { $0 = true } }
        #expect(failure(refused) is CancellationError)
        #expect(!ran.withLock { $0 })
        gate.open()
    }
}
