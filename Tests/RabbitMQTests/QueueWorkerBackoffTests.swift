import Logging
import RabbitMQTestSupport
import Testing

@testable import RabbitMQ

/// A worker's pauses between subscription attempts, on a test clock. The broker address is a closed local port:
/// each attempt fails at once with a refused connection, and nothing depends on a broker.
@Suite("Queue worker backoff")
struct QueueWorkerBackoffTests {
    @Test func aWorkerThatCannotSubscribeWaitsTheGrowingDelaysThenGivesUp() async throws {
        let clock = MockClock()
        let client = RabbitMQClient(configuration: try .init(url: "amqp://guest:guest@127.0.0.1:1/"),
                                    logger: Logger(label: "test"), clock: clock)
        let recovery = RabbitMQClient.Configuration.Recovery(initialDelay: .seconds(1), maxDelay: .seconds(4),
                                                             jitter: 0, maxAttempts: 4)
        let worker = QueueWorker(client: client, configuration: .init(queue: "q", recovery: recovery)) { _ in }
        let events = worker.events()
        let run = Task { try await worker.run() }
        let delays: [Duration] = [.seconds(1), .seconds(2), .seconds(4), .seconds(4)]
        for (attempt, delay) in zip(1..., delays) {
            #expect(delay == recovery.delay(beforeAttempt: attempt))
            let deadline = clock.now.advanced(by: delay)
            #expect(await clock.sleeps() == [deadline])
            clock.advance(by: delay - .nanoseconds(1))
            // Still pausing: the next attempt comes only with the end of the pause.
            #expect(clock.deadlines == [deadline])
            clock.advance(by: .nanoseconds(1))
        }
        let error = await #expect(throws: RabbitMQError.self) { try await run.value }
        #expect(error?.code == .connectionRefused)
        var pauses: [Duration] = []
        var failures = 0
        for await event in events {
            switch event {
            case .resubscribing(let attempt, let delay):
                #expect(attempt == pauses.count + 1)
                pauses.append(delay)
            case .subscribeFailed: failures += 1
            default: break
            }
        }
        #expect(pauses == delays)
        #expect(failures == delays.count + 1)
        await client.close()
    }
}
