import Foundation

/// The machine a run ran on, for the report.
struct MachineInfo: Sendable {
    var processors: Int
    var memoryGiB: Double
    var loadAtStart: String
    var rabbitmq: String
    var erlang: String
    var librabbitmq: String
    var swift: String

    static func collect() async -> MachineInfo {
        func firstLine(_ arguments: [String]) async -> String {
            let result = await Shell.run(arguments, limit: 30)
            let line = result.output.split(separator: "\n").first.map(String.init) ?? ""
            return result.status == 0 && !line.isEmpty ? line : "unknown"
        }
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?
            .split(separator: " ").prefix(3).joined(separator: " ") ?? "unknown"
        return MachineInfo(
            processors: ProcessInfo.processInfo.activeProcessorCount,
            memoryGiB: Double(ProcessInfo.processInfo.physicalMemory) / Double(1 << 30),
            loadAtStart: load,
            rabbitmq: await firstLine(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]),
            erlang: await firstLine(["dpkg-query", "-W", "-f", "${Version}", "erlang-base"]),
            librabbitmq: await firstLine(["pkg-config", "--modversion", "librabbitmq"]),
            swift: await firstLine(["swift", "--version"]))
    }
}

/// Everything a run measured, its invariants and its report.
struct SoakOutcome {
    var seed: UInt64
    var messages: Int
    var label: String
    var machine: MachineInfo
    var heartbeat: Int
    var timeout: Int
    var producers: Int
    var workers: Int
    var producer: ProducerResult?
    var consumer: ConsumerResult?
    var parked: [Int]
    var leftover: [Int]
    var faults: [FaultRecord]
    var plannedFaults: Int
    var faultPhase: Double
    var duration: Double
    var coordinatorOverruns: [CallTracker.Overrun]
    var drained: Bool
    var notes: [String]

    private var confirmed: Set<Int> {
        Set((producer?.confirmed ?? []).enumerated().compactMap { $0.element > 0 ? $0.offset : nil })
    }

    private var processed: Set<Int> {
        Set((consumer?.processed ?? []).enumerated().compactMap { $0.element > 0 ? $0.offset : nil })
    }

    /// Confirmed ids neither processed, nor parked, nor still in a queue.
    var lost: Set<Int> { confirmed.subtracting(processed).subtracting(parked).subtracting(leftover) }
    /// Confirmed ids never processed nor parked but still queued at the end: work that stalled.
    var unprocessed: Set<Int> { confirmed.subtracting(processed).subtracting(parked).intersection(leftover) }
    var overruns: [CallTracker.Overrun] {
        (producer?.overruns ?? []) + (consumer?.overruns ?? []) + coordinatorOverruns
    }
    var duplicates: (messages: Int, extra: Int) {
        let counts = (consumer?.processed ?? []).filter { $0 > 1 }
        return (counts.count, counts.reduce(0) { $0 + Int($1) - 1 })
    }
    var publishFailures: [FailureCount] { producer?.failures ?? [] }
    var recoveries: [Double] { ((producer?.recovery.durations ?? []) + (consumer?.recovery.durations ?? [])).sorted() }

    /// Each invariant: what it checks, whether it holds, the figure.
    var invariants: [(name: String, holds: Bool, figure: String)] {
        let nonRetryable = publishFailures.filter { !$0.retryable }.reduce(0) { $0 + $1.count }
        let faultErrors = faults.filter { $0.error != nil || !$0.healthy }
        var checks: [(String, Bool, String)] = [
            ("confirmed messages lost", producer != nil && consumer != nil && lost.isEmpty,
             consumer == nil ? "unknown (no consumer ledger)" : "\(lost.count)"),
            ("confirmed messages left unprocessed in the queues", unprocessed.isEmpty, "\(unprocessed.count)"),
            ("calls that overran their timeout (+\(Int(overrunSlack.seconds)) s)", overruns.isEmpty, "\(overruns.count)"),
            ("non-retryable publish failures", nonRetryable == 0, "\(nonRetryable)"),
            ("faults injected as planned", faults.count == plannedFaults && faultErrors.isEmpty,
             "\(faults.count - faultErrors.count) of \(plannedFaults)"),
            ("workers that stopped on their own", (consumer?.workersEndedEarly.isEmpty ?? false),
             "\(consumer?.workersEndedEarly.count ?? 0)"),
            ("producer RSS flat", producer?.memory.isFlat ?? false, producer.map { Self.mib($0.memory) } ?? "?"),
            ("consumer RSS flat", consumer?.memory.isFlat ?? false, consumer.map { Self.mib($0.memory) } ?? "?"),
        ]
        checks.append(("no run failure", notes.isEmpty, notes.isEmpty ? "none" : "\(notes.count)"))
        return checks
    }

    var passed: Bool { invariants.allSatisfy(\.holds) }

    static func mib(_ memory: MemoryFigures) -> String {
        func m(_ bytes: Int) -> String { String(format: "%.0f", Double(bytes) / 1_048_576) }
        return "\(m(memory.start)) / \(m(memory.warm)) / \(m(memory.end)) MiB (peak \(m(memory.peak)))"
    }

    private static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        return values[values.count / 2]
    }

    /// The run's section of RELIABILITY.md, in Markdown.
    func report() -> String {
        let date = ISO8601DateFormatter().string(from: Date())
        var lines: [String] = []
        lines.append("## Run of \(date), seed \(seed)\(label.isEmpty ? "" : ": \(label)")")
        lines.append("")
        lines.append("Machine: \(machine.processors) cores, \(String(format: "%.1f", machine.memoryGiB)) GiB, load "
                     + "\(machine.loadAtStart) at the start; RabbitMQ \(machine.rabbitmq) (Erlang \(machine.erlang)), "
                     + "librabbitmq \(machine.librabbitmq), \(machine.swift).")
        lines.append("Settings: \(messages) messages, \(producers) `client.publish` tasks and one channel with a "
                     + "window of 100, \(workers) `QueueWorker`s (concurrency 8, prefetch 50, retry tiers, parking "
                     + "lot, 5% of attempts fail retryably), heartbeat \(heartbeat) s, confirm and request timeouts "
                     + "\(timeout) s. Rerun: `make chaos CHAOS_ARGS='--seed \(seed)'`.")
        lines.append("")
        lines.append("| invariant | result | figure |")
        lines.append("| --- | --- | --- |")
        for check in invariants {
            lines.append("| \(check.name) | \(check.holds ? "PASS" : "**FAIL**") | \(check.figure) |")
        }
        lines.append("")
        let confirmedCount = confirmed.count
        let failures = publishFailures
        let retryable = failures.filter(\.retryable).reduce(0) { $0 + $1.count }
        let nonRetryable = failures.filter { !$0.retryable }.reduce(0) { $0 + $1.count }
        let recoveries = recoveries
        let duplicates = duplicates
        lines.append("| figure | value |")
        lines.append("| --- | --- |")
        lines.append("| messages confirmed | \(confirmedCount) of \(messages) (\(producer?.gaveUp.count ?? 0) given up "
                     + "after a non-retryable failure or 10 failed attempts) |")
        lines.append("| processed (distinct ids) | \(processed.count) |")
        lines.append("| parked | \(parked.count) messages |")
        lines.append("| confirmed messages lost | \(lost.count)"
                     + (lost.isEmpty ? "" : "; \(lost.intersection(consumer?.failedOnce ?? []).count) of them had "
                        + "failed once (went through a retry tier); e.g. \(lost.sorted().prefix(5).map { SoakTopology.messageID($0) })")
                     + " |")
        lines.append("| confirmed, still queued unprocessed at the end | \(unprocessed.count) |")
        lines.append("| calls that overran their timeout | \(overruns.count) of \((producer?.calls ?? 0) + (consumer?.calls ?? 0)) timed calls"
                     + (overruns.isEmpty ? "" : "; e.g. \(overruns.sorted { $0.seconds > $1.seconds }.prefix(3).map(\.description))")
                     + " |")
        lines.append("| publishes failed | \(retryable + nonRetryable): \(retryable) retryable, \(nonRetryable) not |")
        for failure in failures {
            lines.append("| - \(failure.code), \(failure.retryable ? "retryable" : "not retryable") | \(failure.count); "
                         + "e.g. `\(failure.example.replacingOccurrences(of: "|", with: "/"))` |")
        }
        lines.append("| duplicates processed | \(duplicates.extra) extra runs of \(duplicates.messages) messages |")
        lines.append("| handler failures (simulated) | \(consumer?.handlerFailures ?? 0); worker outcomes "
                     + "\(consumer?.outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") ?? "?") |")
        lines.append("| recoveries | \(recoveries.count) (producer \(producer?.recovery.lost ?? 0) and consumer "
                     + "\(consumer?.recovery.lost ?? 0) connections lost); median "
                     + "\(Self.median(recoveries).map { String(format: "%.1f s", $0) } ?? "-"), max "
                     + "\(recoveries.last.map { String(format: "%.1f s", $0) } ?? "-") |")
        lines.append("| producer RSS start / warm / end | \(producer.map { Self.mib($0.memory) } ?? "?") |")
        lines.append("| consumer RSS start / warm / end | \(consumer.map { Self.mib($0.memory) } ?? "?") |")
        lines.append("| duration | \(String(format: "%.0f s (faults %.0f s)", duration, faultPhase)) |")
        lines.append("")
        let byKind = Dictionary(grouping: faults, by: \.kind)
        lines.append("Faults: " + FaultKind.allCases.map { kind in
            let records = byKind[kind] ?? []
            let seconds = records.map(\.seconds).reduce(0, +) / Double(max(records.count, 1))
            return "\(records.count) × \(kind.rawValue) (mean \(String(format: "%.1f", seconds)) s)"
        }.joined(separator: ", ") + ".")
        let problems = faults.filter { $0.error != nil || !$0.healthy }
        for record in problems {
            lines.append("- fault \(record.index) (\(record.kind.rawValue) on \(record.target)): "
                         + "\(record.error ?? "the cluster did not come back whole")")
        }
        for ended in consumer?.workersEndedEarly ?? [] { lines.append("- \(ended)") }
        for failed in (producer?.recovery.failed ?? []) + (consumer?.recovery.failed ?? []) {
            lines.append("- recovery failed: \(failed)")
        }
        for note in notes { lines.append("- \(note)") }
        lines.append("")
        lines.append(passed ? "Result: **PASS**." : "Result: **FAIL**.")
        return lines.joined(separator: "\n")
    }
}

/// RELIABILITY.md: a header written once, then one section per run.
enum Report {
    static let header = """
        # Reliability: the chaos soak

        `make chaos` starts a three-node cluster of its own (`swiftrmq-x1..x3`, ports 5881-5883), runs producers and
        `QueueWorker` consumers on a quorum queue with retry tiers and a parking lot, and meanwhile injects a seeded
        schedule of 35 faults: 10 `stop_app`/`start_app`, 10 `kill -9` then restart, 5 freezes (`SIGSTOP` for three
        heartbeats, then `SIGCONT`), 5 losses (`kill -9`) of the node the clients are connected to, and 5
        `rabbitmqctl close_connection`. One node at most is down at a time, and each fault ends only once every node
        sees the whole cluster again. Then it counts, by message id: every id the broker confirmed must have been
        processed or parked. Each run appends its section below (`scripts/chaos.sh`, `Benchmarks/ChaosSoak`).

        RSS is sampled after connecting (start), once 10% of the messages went through (warm) and at the end; it
        counts as flat when the end is at most 16 MiB or 25% above the warm sample, whichever is more. A call overruns
        when it returns more than 1 s after its own timeout (or is still running by then at the end).

        """

    static func append(_ section: String, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        var text = (try? String(contentsOf: url, encoding: .utf8)) ?? header
        if !text.hasSuffix("\n") { text += "\n" }
        text += "\n" + section + "\n"
        try Data(text.utf8).write(to: url, options: .atomic)
    }
}
