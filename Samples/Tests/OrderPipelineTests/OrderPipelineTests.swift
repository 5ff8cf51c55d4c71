import Foundation
@testable import OrderPipeline
import RabbitMQ
import Testing

/// The sample order pipeline (Samples/OrderPipeline), run in-process on a small count: the same invariants as
/// `make demo`, cross-checked at the broker.
@Suite("Order pipeline sample")
struct OrderPipelineTests {
    @Test func pipelineGivesEveryValidOrderOneSideEffectPerWorkerAndParksInvalidOnes() async throws {
        var options = PipelineOptions()
        options.count = 300
        options.duplicateRate = 0.05
        options.invalidRate = 0.05
        options.failureRate = 0.1
        options.bursts = 3
        options.burstInterval = .milliseconds(300)
        options.pausedWorker = .notification
        options.pauseAfter = 0.3
        options.pauseDuration = .seconds(1)
        options.sampleInterval = .milliseconds(250)
        options.timeout = .seconds(120)
        options.prefix = TestBroker.uniqueName("orders")
        let databasePath = options.databasePath
        defer {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: databasePath + suffix) }
        }
        let topology = PipelineTopology(prefix: options.prefix)

        try await TestBroker.withClient { client in
            let report: PipelineReport
            do {
                report = try await PipelineRun(client: client, options: options, logger: TestBroker.logger) { _ in }
                    .run()
            } catch {
                try? await topology.delete(on: client)
                throw error
            }

            for check in report.invariants {
                #expect(check.passed, "\(check.name): \(check.detail)")
            }
            #expect(report.invariants.count == 2 + 2 * WorkerKind.allCases.count)
            #expect(report.published.orders == 300)
            #expect(report.published.invalid == 15)
            #expect(report.published.resent == 15)
            #expect(report.published.confirmed == 315)

            // What the broker holds (messages ready or unacknowledged), once its counts, which lag behind the
            // workers (quorum queues report theirs periodically), agree; the checks below fail on a real difference.
            var ready: [String: Int] = [:]
            _ = try await eventually {
                ready = try await BrokerNode.shared.queueCounts().mapValues { $0.ready + $0.unacked }
                return WorkerKind.allCases.allSatisfy {
                    ready[topology.retry($0).parkingLotName] == report.counts[$0]?.parked
                } && topology.pendingQueueNames.allSatisfy { ready[$0] == 0 }
            }
            let valid = 300 - 15
            for kind in WorkerKind.allCases {
                let counts = try #require(report.counts[kind])
                #expect(counts.processed == valid, "\(kind)")
                // Every re-sent copy of a valid order is suppressed; one of an invalid order is parked again.
                #expect(counts.parked >= 15 && counts.parked <= 30, "\(kind): parked \(counts.parked)")
                // At least once: a delivery may come again (after the stopped worker's channel closes), and is then
                // suppressed as one more duplicate.
                #expect(counts.duplicates + counts.parked >= 15 + 15, "\(kind): \(counts)")
                #expect(counts.retried > 0, "\(kind): a 10% timeout rate on 285 orders retries some")
                #expect(report.latencies[kind]?.count == valid)
                // The broker agrees: the parking lot holds what the worker parked.
                #expect(ready[topology.retry(kind).parkingLotName] == counts.parked, "\(kind)")
            }
            // Nothing is left to do: work queues and retry tiers are empty.
            for queue in topology.pendingQueueNames {
                #expect(ready[queue] == 0, "\(queue)")
            }
            // The stopped worker came back and drained what piled up while it was away.
            #expect(report.samples.contains { $0.stopped == [.notification] })
            #expect(report.samples.last?.stopped.isEmpty == true)

            try await topology.delete(on: client)
        }
    }
}
