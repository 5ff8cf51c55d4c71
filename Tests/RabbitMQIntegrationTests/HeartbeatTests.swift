import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Heartbeats with a 2 s interval, on a node of the suite's own (t-heartbeat, port 5721): the tests freeze it,
/// which must not disturb the shared node.
@Suite("Heartbeats", .serialized, HeartbeatNode())
struct HeartbeatTests {
    static let interval: Duration = .seconds(2)

    @Test("an idle connection keeps sending heartbeats and stays up for 10 s")
    func idleConnectionStaysUp() async throws {
        let broker = try HeartbeatNode.broker
        try await Self.withClient(broker, name: TestBroker.uniqueName("hb-idle")) { client, name, events in
            let before = try #require(try await Self.connections(broker, named: name).first)
            #expect(before.heartbeat == 2, "the broker should use the client's 2 s interval")

            // Nothing uses the client for five intervals: the broker drops a connection that sends nothing for
            // two of them, unless the client sends heartbeats on its own.
            try await Task.sleep(for: .seconds(10))

            try await Self.expectConnectionKept(before, client, broker, name: name, events: events)
        }
    }

    @Test("a connection stays up while the application's task computes and blocks for 8 s")
    func busyApplicationTask() async throws {
        let broker = try HeartbeatNode.broker
        try await Self.withClient(broker, name: TestBroker.uniqueName("hb-busy")) { client, name, events in
            let before = try #require(try await Self.connections(broker, named: name).first)

            // This task hogs its thread, never suspending: 4 s of arithmetic, then 4 s blocked in sleep.
            let busyUntil = ContinuousClock.now + .seconds(4)
            var state: UInt64 = 0x9E37_79B9_7F4A_7C15
            var rounds = 0
            while ContinuousClock.now < busyUntil {
                for _ in 0..<10_000 { state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407 }
                rounds += 1
            }
            Self.blockThread(seconds: 4)
            #expect(rounds > 0 && state != 0)

            try await Self.expectConnectionKept(before, client, broker, name: name, events: events)
        }
    }

    @Test("a frozen broker is detected within two intervals, and the client recovers when it thaws")
    func frozenBrokerIsDetected() async throws {
        let broker = try HeartbeatNode.broker
        try await Self.withClient(broker, name: TestBroker.uniqueName("hb-freeze")) { client, _, events in
            let queue = TestBroker.uniqueName("hb-freeze")
            _ = try await client.declare(Queue(queue))
            try await client.publish(Data("before".utf8), routingKey: queue)
            #expect(try await broker.queueStats(queue)?.ready == 1)

            let frozenAt = ContinuousClock.now
            let thawedAt = try await Self.whileFrozen(broker) {
                // Two missed intervals (4 s) plus up to half an interval until the I/O loop next looks.
                _ = try await eventually(timeout: .seconds(20)) { !events.lost(after: frozenAt).isEmpty }
                // The outage goes on: reconnection attempts reach a node that accepts TCP connections but never
                // answers, and must give up at the 3 s handshake timeout and try again.
                try await Task.sleep(for: .seconds(5))
                return ContinuousClock.now
            }
            let lost = try #require(events.lost(after: frozenAt).first, "no connectionLost: \(events.summary)")
            let detection = lost.at - frozenAt
            print("heartbeat: a frozen broker was detected after \(detection) (interval \(Self.interval))")
            // Two intervals (4 s) are expected. The bound leaves room for a loaded machine and still tells
            // heartbeats apart from anything else: a frozen node's kernel keeps the TCP connection up, so without
            // heartbeats nothing would ever be detected.
            #expect(detection < .seconds(15), "detected after \(detection)")
            #expect(lost.error.code == .connectionLost)
            #expect(lost.error.message.contains("heartbeat"), "\(lost.error)")

            let recovered = try await eventually(timeout: .seconds(30)) {
                events.recovered(after: lost.at) != nil
            }
            #expect(recovered, "no recovered event after the thaw: \(events.summary)")
            #expect(events.reconnectionAttempts(after: lost.at) >= 2, "\(events.summary)")
            if let recoveredAt = events.recovered(after: lost.at) {
                print("heartbeat: recovered \(recoveredAt - thawedAt) after the thaw")
            }
            try await client.publish(Data("after".utf8), routingKey: queue)
            #expect(try await broker.queueStats(queue)?.ready == 2)
            _ = try await client.deleteQueue(queue)
        }
    }

    @Test("a broker frozen while publishes fill the socket is detected, and the publishes fail instead of hanging")
    func frozenBrokerIsDetectedWhileTheSocketIsFull() async throws {
        let broker = try HeartbeatNode.broker
        try await Self.withClient(broker, name: TestBroker.uniqueName("hb-freeze-publish")) { client, _, events in
            let queue = TestBroker.uniqueName("hb-freeze-publish")
            _ = try await client.declare(Queue(queue, durable: false))
            let channel = try await client.openChannel()
            try await channel.enableConfirms(window: 64)

            let frozenAt = ContinuousClock.now
            let failure = try await Self.whileFrozen(broker) {
                // 64 MiB: far more than the sockets' buffers hold, so the I/O thread ends up waiting to write.
                let body = Data(repeating: 0x5A, count: 1 << 20)
                for _ in 0..<64 { _ = try await channel.publishWithDeferredConfirm(body, routingKey: queue) }
                return await #expect(throws: RabbitMQError.self) { try await channel.waitForConfirms() }
            }
            let failedAfter = ContinuousClock.now - frozenAt
            let error = try #require(failure)
            print("heartbeat: publishes into a frozen broker failed after \(failedAfter): \(error)")
            #expect(error.isRetryable, "\(error)")
            // A hang guard: about two intervals (4 s) are expected; without heartbeats they would never fail.
            #expect(failedAfter < .seconds(20), "failed after \(failedAfter)")
            // The publisher hears of the failure first; the connection event follows from the recovery task.
            _ = try await eventually { !events.lost(after: frozenAt).isEmpty }
            let lost = try #require(events.lost(after: frozenAt).first, "no connectionLost: \(events.summary)")
            #expect(lost.error.code == .connectionLost)

            let recovered = try await eventually(timeout: .seconds(30)) {
                events.recovered(after: lost.at) != nil
            }
            #expect(recovered, "no recovered event after the thaw: \(events.summary)")
            let after = TestBroker.uniqueName("hb-freeze-after")
            _ = try await client.declare(Queue(after, durable: false))
            try await client.publish(Data("after".utf8), routingKey: after)
            #expect(try await broker.queueStats(after)?.ready == 1)
            _ = try await client.deleteQueue(after)
            _ = try await client.deleteQueue(queue)
        }
    }

    // MARK: Helpers

    /// Runs `body` while the node's Erlang VM is stopped (SIGSTOP), and resumes it afterwards, also on failure.
    static func whileFrozen<Result>(_ broker: DedicatedBroker,
                                    _ body: () async throws -> Result) async throws -> Result {
        let pid = try await HeartbeatNode.beamPID(broker)
        guard kill(pid, SIGSTOP) == 0 else { throw HeartbeatNodeError(message: "kill -STOP \(pid) failed") }
        defer { kill(pid, SIGCONT) }
        return try await body()
    }

    /// Checks that the client still has the connection `before` (the broker kept receiving from it, heartbeats at
    /// least: 8 bytes each, about one per 2 s interval) and that publishing works.
    static func expectConnectionKept(_ before: (pid: String, heartbeat: Int, receivedOctets: Int),
                                     _ client: RabbitMQClient, _ broker: DedicatedBroker, name: String,
                                     events: HeartbeatEventLog) async throws {
        let after = try await connections(broker, named: name)
        #expect(after.map(\.pid) == [before.pid], "the same connection should still be there")
        let sent = (after.first?.receivedOctets ?? 0) - before.receivedOctets
        #expect(sent >= 3 * 8, "the broker received \(sent) bytes from the client")
        #expect(events.lost.isEmpty, "\(events.summary)")
        try await checkPublishing(client, broker)
    }

    /// Runs `body` with a connected client of the node with a 2 s heartbeat and quick recovery, and the log of
    /// its connection events; closes the client afterwards.
    static func withClient(_ broker: DedicatedBroker, name: String,
                           _ body: (RabbitMQClient, String, HeartbeatEventLog) async throws -> Void) async throws {
        var configuration = try broker.configuration
        configuration.connectionName = name
        configuration.heartbeat = interval
        configuration.connectTimeout = .seconds(3)
        configuration.handshakeTimeout = .seconds(3)
        configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
        try await TestBroker.withClient(configuration: configuration) { client in
            try await body(client, name, HeartbeatEventLog(following: client))
        }
    }

    /// Blocks the calling thread (a thread of the cooperative pool, here) without suspending.
    static func blockThread(seconds: Int) {
        var remaining = timespec(tv_sec: seconds, tv_nsec: 0)
        var rest = timespec()
        var interruptions = 0
        while nanosleep(&remaining, &rest) != 0, errno == EINTR, interruptions < 100 {
            remaining = rest
            interruptions += 1
        }
    }

    /// Publishes through the client and counts the message at the broker.
    static func checkPublishing(_ client: RabbitMQClient, _ broker: DedicatedBroker) async throws {
        let queue = TestBroker.uniqueName("hb")
        _ = try await client.declare(Queue(queue))
        try await client.publish(Data("still connected".utf8), routingKey: queue)
        #expect(try await broker.queueStats(queue)?.ready == 1)
        _ = try await client.deleteQueue(queue)
    }

    /// The broker's view of the connections named `name`: pid, heartbeat interval in seconds, bytes received.
    static func connections(_ broker: DedicatedBroker, named name: String) async throws
        -> [(pid: String, heartbeat: Int, receivedOctets: Int)]
    {
        try await broker.node.connections(named: name, "pid", "timeout", "recv_oct").map {
            ($0[0], Int($0[1]) ?? -1, Int($0[2]) ?? -1)
        }
    }
}

/// The connection events of one client, with the time each arrived.
final class HeartbeatEventLog: Sendable {
    private let entries = Locked<[(at: ContinuousClock.Instant, event: ConnectionEvent)]>([])

    /// Starts recording `client`'s events; recording ends when the client closes.
    init(following client: RabbitMQClient) {
        let stream = client.connectionEvents()
        Task { [self] in
            for await event in stream { entries.withLock { $0.append((.now, event)) } }
        }
    }

    /// The `connectionLost` events.
    var lost: [(at: ContinuousClock.Instant, error: RabbitMQError)] { lost(after: nil) }

    /// The `connectionLost` events that came after `instant`.
    func lost(after instant: ContinuousClock.Instant?) -> [(at: ContinuousClock.Instant, error: RabbitMQError)] {
        entries.withLock { entries in
            entries.compactMap { entry in
                guard case .connectionLost(let error) = entry.event, instant.map({ entry.at > $0 }) ?? true else {
                    return nil
                }
                return (entry.at, error)
            }
        }
    }

    /// When the first `recovered` event after `instant` came.
    func recovered(after instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        entries.withLock { entries in
            entries.first { if case .recovered = $0.event { $0.at > instant } else { false } }?.at
        }
    }

    /// The number of the last reconnection attempt announced after `instant` (0 when none was).
    func reconnectionAttempts(after instant: ContinuousClock.Instant) -> Int {
        entries.withLock { entries in
            entries.compactMap { entry -> Int? in
                guard case .reconnecting(let attempt, _) = entry.event, entry.at > instant else { return nil }
                return attempt
            }.max() ?? 0
        }
    }

    /// The events so far, for failure messages.
    var summary: String {
        entries.withLock { entries in
            entries.map { entry in
                switch entry.event {
                case .connectionLost(let error): "lost(\(error.code): \(error.message))"
                default: "\(entry.event)"
                }
            }.joined(separator: ", ")
        }
    }
}

/// Runs the heartbeat suite on a node of its own, `t-heartbeat@localhost` on port 5721, started once for the
/// suite and stopped after it, also when a test fails.
struct HeartbeatNode: SuiteTrait, TestScoping {
    @TaskLocal static var current: DedicatedBroker?

    /// The suite's node.
    static var broker: DedicatedBroker {
        get throws {
            guard let current else { throw HeartbeatNodeError(message: "the suite's node was not started") }
            return current
        }
    }

    func provideScope(for test: Test, testCase: Test.Case?,
                      performing function: @Sendable () async throws -> Void) async throws {
        try await DedicatedBroker.with(name: "t-heartbeat", port: 5721) { broker in
            try await Self.$current.withValue(broker) { try await function() }
        }
    }

    /// The pid of the node's `beam.smp` (`scripts/broker.sh pid`), for `kill -STOP` and `kill -CONT`.
    static func beamPID(_ broker: DedicatedBroker) async throws -> pid_t {
        let output = try await ChildProcess.brokerScript(["pid", broker.name])
        let text = output.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let pid = pid_t(text), pid > 1 else {
            throw HeartbeatNodeError(message: "broker.sh pid \(broker.name) gave '\(text)'")
        }
        return pid
    }
}

struct HeartbeatNodeError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
