import Foundation

/// Text output of a run: the live progress lines, the summary table, the queue-depth chart and the invariants.
enum Summary {
    private static let columnWidth = 30

    /// The header above the progress lines.
    static var progressHeader: String {
        "  time " + pad("written", 15) + pad("outbox", 8)
            + WorkerKind.allCases.map { "  " + pad("\($0.rawValue): queued / done", columnWidth, left: false) }.joined()
    }

    /// One progress line: events written so far and waiting in the outbox, and for each worker its ready messages
    /// and settled deliveries (the last known depths while the broker is down).
    static func progressLine(_ sample: ProgressSample, total: Int) -> String {
        var line = "[" + pad("\(Int(sample.elapsed.seconds.rounded()))s", 4) + "]"
        line += pad("\(sample.published.grouped)/\(total.grouped)", 15) + pad(sample.backlog.grouped, 8)
        for kind in WorkerKind.allCases {
            let depth = sample.depths[kind, default: 0]
            let done = sample.counts[kind]?.settled ?? 0
            var cell = pad(depth.grouped, 7) + " / " + pad(done.grouped, 6)
            if sample.stopped.contains(kind) { cell += " STOPPED" }
            line += "  " + pad(cell, columnWidth, left: false)
        }
        if sample.brokerDown { line += "  BROKER DOWN" }
        return line.trimmingCharacters(in: .whitespaces)
    }

    /// The summary: what was published, then a row per worker.
    static func table(_ report: PipelineReport) -> String {
        let published = report.published
        var lines: [String] = []
        lines.append("Order service: \(published.orders.grouped) orders (\(published.invalid.grouped) invalid), "
                     + "\(published.resent.grouped) re-sent; \(published.published.grouped) events written to the "
                     + "outbox, \(published.confirmed.grouped) published and confirmed by the relay")
        lines.append("")
        let header = [pad("worker", 16, left: false), pad("processed", 10), pad("retried", 8), pad("parked", 7),
                      pad("duplicates", 11), pad("p50 latency", 12), pad("p99 latency", 12)]
        lines.append(header.joined(separator: " "))
        lines.append(String(repeating: "-", count: header.joined(separator: " ").count))
        for kind in WorkerKind.allCases {
            let counts = report.counts[kind] ?? PipelineWorker.Counts()
            let latency = report.latencies[kind]
            let row = [pad(kind.rawValue, 16, left: false), pad(counts.processed.grouped, 10),
                       pad(counts.retried.grouped, 8), pad(counts.parked.grouped, 7),
                       pad(counts.duplicates.grouped, 11),
                       pad(latency.map { milliseconds($0.p50) } ?? "-", 12),
                       pad(latency.map { milliseconds($0.p99) } ?? "-", 12)]
            lines.append(row.joined(separator: " "))
        }
        lines.append("")
        lines.append("Latency: from the order's placedAt to its side effect in the database, retries and the "
                     + "stopped worker included.")
        let caught = WorkerKind.allCases.map { report.counts[$0]?.caughtByDatabase ?? 0 }.reduce(0, +)
        lines.append("Duplicates: re-sent orders acked without processing (by the deduplicator's durable store, or "
                     + "caught in the side effect's transaction: \(caught)).")
        lines.append("Parked: invalid orders, with a re-sent invalid order parked once per copy.")
        return lines.joined(separator: "\n")
    }

    /// A small chart per worker of its queue depth over time, one column per sample; `^` under the axis marks
    /// the samples when the worker was stopped.
    static func chart(_ samples: [ProgressSample], height: Int = 5, width: Int = 72) -> String {
        guard !samples.isEmpty else { return "(no samples)" }
        // Merge neighbouring samples (keeping the highest depth) so the chart fits the width.
        let perColumn = max(1, (samples.count + width - 1) / width)
        let columns = stride(from: 0, to: samples.count, by: perColumn).map {
            Array(samples[$0..<min($0 + perColumn, samples.count)])
        }
        var lines = ["Queue depth over time (ready messages; one column = \(perColumn) sample(s), "
                     + "'^' = worker stopped)"]
        for kind in WorkerKind.allCases {
            let depths = columns.map { $0.map { $0.depths[kind, default: 0] }.max() ?? 0 }
            let stopped = columns.map { $0.contains { $0.stopped.contains(kind) } }
            let peak = depths.max() ?? 0
            lines.append("")
            lines.append("\(kind.rawValue)  (peak \(peak.grouped))")
            for row in stride(from: height, through: 1, by: -1) {
                let label = row == height ? pad(peak.grouped, 7) : pad("", 7)
                let bars = depths.map { depth -> Character in
                    guard peak > 0 else { return " " }
                    let filled = Double(depth) / Double(peak) * Double(height)
                    if filled >= Double(row) { return "#" }
                    if filled > Double(row) - 0.5 || (row == 1 && depth > 0) { return "." }
                    return " "
                }
                lines.append(label + " |" + String(bars))
            }
            lines.append(pad("0", 7) + " +" + String(repeating: "-", count: depths.count))
            if stopped.contains(true) {
                lines.append(pad("", 7) + "  " + String(stopped.map { $0 ? "^" : " " }))
            }
        }
        let seconds = Int((samples.last?.elapsed.seconds ?? 0).rounded())
        lines.append(pad("", 9) + "0 s" + String(repeating: " ", count: max(1, columns.count - 6)) + "\(seconds) s")
        return lines.joined(separator: "\n")
    }

    /// The invariants, one line each.
    static func invariants(_ checks: [InvariantCheck]) -> String {
        checks.map { "\($0.passed ? "PASS" : "FAIL")  \($0.name): \($0.detail)" }.joined(separator: "\n")
    }

    /// Everything printed at the end of a run.
    static func report(_ report: PipelineReport) -> String {
        [
            "",
            "=== Summary (\(report.elapsed.formattedSeconds)) ===",
            table(report),
            "",
            chart(report.samples),
            "",
            "=== Invariants ===",
            invariants(report.invariants),
            "",
            report.passed ? "All invariants hold." : "SOME INVARIANTS FAILED.",
            "Side effects are in \(report.databasePath)",
        ].joined(separator: "\n")
    }

    static func milliseconds(_ value: UInt64) -> String {
        value >= 10_000 ? String(format: "%.1f s", Double(value) / 1000) : "\(Int(value).grouped) ms"
    }

    static func pad(_ text: String, _ width: Int, left: Bool = true) -> String {
        guard text.count < width else { return text }
        let padding = String(repeating: " ", count: width - text.count)
        return left ? padding + text : text + padding
    }
}

extension Duration {
    /// The duration in seconds, as a floating-point number.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
