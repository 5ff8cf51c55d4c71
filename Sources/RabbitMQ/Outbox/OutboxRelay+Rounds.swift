import CoreMetrics
import Logging
import Synchronization

extension OutboxRelay {
    /// What one round of publishing did.
    struct RoundResult {
        /// Events confirmed, in sequence order.
        var confirmed: [Int64] = []
        /// Events whose publish failed, with the error.
        var failed: [(sequence: Int64, error: any Error)] = []
        /// Events not attempted because an earlier event of their key failed.
        var heldBack = 0
    }

    /// The relay's loop: fetch a batch, publish it, mark it; pause after a failure; wait for a nudge or the poll
    /// interval when the outbox is empty.
    func relay() async {
        var failures = 0
        while isRunning {
            let records: [OutboxRecord]
            do {
                records = try await store.pending(limit: configuration.batchSize)
            } catch {
                failures += 1
                reportStoreFailure(error, reading: true)
                await pause(afterFailures: failures)
                continue
            }
            if records.isEmpty {
                if failures > 0 { recovered(after: &failures) }
                await waitForEvents()
                continue
            }
            let result = await publishRound(records)
            if await settle(result) {
                if failures > 0 { recovered(after: &failures) }
                broadcaster.emit(.published(count: result.confirmed.count))
            } else {
                failures += 1
                await pause(afterFailures: failures)
            }
        }
    }

    /// Marks what a round confirmed and failed. Returns `false` if anything failed.
    private func settle(_ result: RoundResult) async -> Bool {
        if !result.confirmed.isEmpty {
            do {
                try await store.markSent(result.confirmed)
            } catch {
                reportStoreFailure(error, reading: false)
                return false
            }
            counters.withLock { $0.published += result.confirmed.count }
            publishedCounter?.increment(by: Int64(result.confirmed.count))
        }
        guard let first = result.failed.first else { return true }
        counters.withLock { $0.failedPublishes += result.failed.count }
        failureCounter?.increment(by: Int64(result.failed.count))
        for failure in result.failed {
            // Only a count for the operator: a failure to record it changes nothing.
            try? await store.markFailed(failure.sequence, reason: "\(failure.error)")
        }
        let error = Self.rabbitMQError(first.error)
        let unsent = result.failed.count + result.heldBack
        logger.warning("outbox events not published; they stay pending and are retried",
                       metadata: [LogMetadataKey.error: "\(error)", "rabbitmq.outbox.unsent": "\(unsent)",
                                  "rabbitmq.outbox.confirmed": "\(result.confirmed.count)"])
        broadcaster.emit(.publishFailed(error, unsent: unsent))
        return false
    }

    private func recovered(after failures: inout Int) {
        logger.info("outbox relay publishing again", metadata: ["rabbitmq.outbox.failed_rounds": "\(failures)"])
        broadcaster.emit(.recovered(failedRounds: failures))
        failures = 0
    }

    private func reportStoreFailure(_ error: any Error, reading: Bool) {
        let what = reading
            ? "reading the outbox failed" : "marking outbox events sent failed; they will be published again"
        logger.error("\(what)", metadata: [LogMetadataKey.error: "\(error)"])
        broadcaster.emit(.storeFailed(description: "\(what): \(error)"))
    }

    /// Publishes `records`: one chain per aggregate key, each event after the previous one of its key is
    /// confirmed; the chains run concurrently. A chain stops at its first failure.
    func publishRound(_ records: [OutboxRecord]) async -> RoundResult {
        var chains: [[OutboxRecord]] = []
        var chainOfKey: [String: Int] = [:]
        for record in records {
            if let key = record.event.aggregateKey, let index = chainOfKey[key] {
                chains[index].append(record)
            } else {
                if let key = record.event.aggregateKey { chainOfKey[key] = chains.count }
                chains.append([record])
            }
        }
        return await withTaskGroup(of: RoundResult.self) { group in
            for chain in chains {
                group.addTask { await self.publishChain(chain) }
            }
            var round = RoundResult()
            for await result in group {
                round.confirmed += result.confirmed
                round.failed += result.failed
                round.heldBack += result.heldBack
            }
            round.confirmed.sort()
            round.failed.sort { $0.sequence < $1.sequence }
            return round
        }
    }

    private func publishChain(_ chain: [OutboxRecord]) async -> RoundResult {
        var result = RoundResult()
        for (index, record) in chain.enumerated() {
            do {
                try await publish(record.event)
                result.confirmed.append(record.sequence)
            } catch {
                result.failed.append((record.sequence, error))
                result.heldBack = chain.count - index - 1
                break
            }
        }
        return result
    }

    /// `error` as a ``RabbitMQError`` for ``Event/publishFailed(_:unsent:)``.
    static func rabbitMQError(_ error: any Error) -> RabbitMQError {
        if let error = error as? RabbitMQError { return error }
        if error is CancellationError {
            return RabbitMQError(.clientClosed, "the relay was cancelled", operation: "outbox.publish",
                                 isRetryable: true)
        }
        return RabbitMQError(.connectionLost, "publishing failed: \(error)", operation: "outbox.publish",
                             isRetryable: true)
    }
}
