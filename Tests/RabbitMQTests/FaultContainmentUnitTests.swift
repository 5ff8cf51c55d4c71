import CRabbitMQ
import Foundation
import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

/// The pieces of fault containment that need no broker: waits with hard deadlines, collateral errors, the exchange
/// checks before publishing, and how a broker's close names what failed.
@Suite("Fault containment (unit)")
struct FaultContainmentUnitTests {
    // MARK: SharedResult

    @Test("a waiter gets the outcome when it comes before its deadline")
    func sharedResultOutcome() async throws {
        let result = SharedResult<Int>()
        let waiter = Task { try await result.value(until: .now + .seconds(60), operation: "op", awaited: "it") }
        try await Task.sleep(for: .milliseconds(20))
        result.complete(.success(7))
        #expect(try await waiter.value == 7)
        // Later waiters get it at once; a second outcome is ignored.
        result.complete(.success(8))
        #expect(try await result.value(until: .now, operation: "op", awaited: "it") == 7)
    }

    @Test("waiters fail each at its own deadline although the work never ends")
    func sharedResultDeadlines() async throws {
        let clock = MockClock()
        let result = SharedResult<Int>()
        let first = clock.now.advanced(by: .seconds(1))
        let second = clock.now.advanced(by: .seconds(2))
        let early = Task {
            try await result.value(until: first, clock: clock, operation: "basic.publish", awaited: "the connection")
        }
        let late = Task {
            try await result.value(until: second, clock: clock, operation: "queue.declare", awaited: "the connection")
        }
        #expect(await clock.sleeps(count: 2) == [first, second])
        clock.advance(by: .seconds(1) - .nanoseconds(1))
        // Both timers still sleep, and only a timer can end these waits: neither has timed out.
        #expect(clock.deadlines == [first, second])
        clock.advance(by: .nanoseconds(1))
        let error = await #expect(throws: RabbitMQError.self) { try await early.value }
        #expect(error?.code == .timeout && error?.isRetryable == true)
        #expect(error?.operation == "basic.publish")
        #expect(error?.message.contains("the connection") == true)
        #expect(clock.deadlines == [second])
        clock.advance(by: .seconds(1) - .nanoseconds(1))
        #expect(clock.deadlines == [second])
        clock.advance(by: .nanoseconds(1))
        let lateError = await #expect(throws: RabbitMQError.self) { try await late.value }
        #expect(lateError?.code == .timeout && lateError?.operation == "queue.declare")
        // A deadline already reached fails at once, without a timer.
        await #expect(throws: RabbitMQError.self) {
            try await result.value(until: clock.now, clock: clock, operation: "op", awaited: "it")
        }
        #expect(clock.deadlines.isEmpty)
        // The outcome still reaches waiters that come later.
        result.complete(.failure(RabbitMQError(.connectionRefused, "refused")))
        let later = await #expect(throws: RabbitMQError.self) {
            try await result.value(until: nil, operation: "op", awaited: "it")
        }
        #expect(later?.code == .connectionRefused)
    }

    @Test("a waiter whose task is cancelled stops waiting; the others keep waiting")
    func sharedResultCancellation() async throws {
        let result = SharedResult<Int>()
        let cancelled = Task { try await result.value(until: nil, operation: "op", awaited: "it") }
        let other = Task { try await result.value(until: nil, operation: "op", awaited: "it") }
        try await Task.sleep(for: .milliseconds(20))
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        result.complete(.success(1))
        #expect(try await other.value == 1)
    }

    // MARK: Collateral errors

    @Test("a collateral error is retryable, has no reply code, and names its cause")
    func collateralError() {
        let cause = RabbitMQError(.channelClosed, "the broker closed channel 1", operation: "basic.publish",
                                  replyCode: 404, replyText: "NOT_FOUND - no exchange 'x' in vhost '/'")
        #expect(!cause.isCollateral && cause.cause == nil && !cause.isRetryable)
        let error = RabbitMQError.collateral(.channelClosed, "another publish failed", cause: cause)
        #expect(error.isCollateral && error.isRetryable)
        #expect(error.replyCode == nil && error.code == .channelClosed)
        #expect(error.cause?.replyCode == 404)
        #expect(error.description.hasSuffix("; caused by \(cause)"))
    }

    // MARK: Known exchanges

    @Test("the default and amq.* exchanges need no check")
    func builtInExchangesNeedNoCheck() async throws {
        let exchanges = KnownExchanges()
        for name in ["", "amq.direct", "amq.topic"] {
            try await exchanges.ensureExists(name, until: .now + .seconds(5)) {
                Issue.record("checked \(name)")
            }
        }
    }

    @Test("concurrent publishes to an unknown exchange share one check, and later ones need none")
    func oneCheckForConcurrentPublishes() async throws {
        let exchanges = KnownExchanges()
        let checks = Locked(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<50 {
                group.addTask {
                    try await exchanges.ensureExists("orders", until: .now + .seconds(30)) {
                        checks.withLock { $0 += 1 }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(checks.withLock { $0 } == 1)
        try await exchanges.ensureExists("orders", until: .now + .seconds(5)) { Issue.record("checked again") }
    }

    @Test("a failed check is reported and not cached; a removed exchange is checked again")
    func failedAndForgottenChecks() async throws {
        let exchanges = KnownExchanges()
        let checks = Locked(0)
        let missing = RabbitMQError(.channelClosed, "missing", replyCode: 404)
        for _ in 0..<2 {
            let error = await #expect(throws: RabbitMQError.self) {
                try await exchanges.ensureExists("gone", until: .now + .seconds(5)) {
                    checks.withLock { $0 += 1 }
                    throw missing
                }
            }
            #expect(error?.replyCode == 404)
        }
        #expect(checks.withLock { $0 } == 2)
        exchanges.add("declared")
        try await exchanges.ensureExists("declared", until: .now + .seconds(5)) { Issue.record("checked") }
        exchanges.remove("declared")
        try await exchanges.ensureExists("declared", until: .now + .seconds(5)) { checks.withLock { $0 += 1 } }
        #expect(checks.withLock { $0 } == 3)
    }

    // MARK: What a broker's close names

    @Test("the exchange a 404 for a publish names")
    func missingExchangeInReplyText() {
        #expect(ConnectionStateMachine.missingExchange(named: "NOT_FOUND - no exchange 'orders.v2' in vhost '/'") == "orders.v2")
        #expect(ConnectionStateMachine.missingExchange(named: "NOT_FOUND - no exchange '' in vhost 'x'") == "")
        #expect(ConnectionStateMachine.missingExchange(named: "NOT_FOUND - no queue 'q' in vhost '/'") == nil)
    }

    @Test("the method a close names, as a number and an AMQP name")
    func methodNamedByAClose() {
        let declare = FrameDecoder.failedMethod(classID: 40, methodID: 10)
        #expect(declare?.number == AMQP_EXCHANGE_DECLARE_METHOD)
        #expect(declare?.number == OutgoingMethod.exchangeDeclare(
            name: "x", type: "direct", passive: false, durable: true, autoDelete: false, internal: false,
            arguments: [:]).number)
        #expect(declare?.name == "exchange.declare")
        #expect(FrameDecoder.failedMethod(classID: 60, methodID: 40)?.name == "basic.publish")
        #expect(FrameDecoder.failedMethod(classID: 20, methodID: 41)?.name == "channel.close-ok")
        #expect(FrameDecoder.failedMethod(classID: 0, methodID: 0) == nil)
    }
}
