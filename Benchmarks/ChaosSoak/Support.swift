import Foundation
import RabbitMQ
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A seeded random number generator (SplitMix64), so that a seed replays the same fault schedule and the same
/// handler failures.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return Self.mix(state)
    }

    /// One output of SplitMix64 for `value`: a stateless hash, for decisions that must not depend on the order
    /// in which concurrent handlers run.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The process's resident set size in bytes, from /proc/self/statm.
func residentSetSize() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// RSS of one process: after connecting, once 10% of the work was done (warmed up), and at the end.
struct MemoryFigures: Codable, Sendable {
    var start = 0
    var warm = 0
    var end = 0
    var peak = 0

    /// The growth allowed from the warm sample to the end: 16 MiB or a quarter of the warm size, whichever is more.
    /// Anything beyond means memory grows with the messages or the faults.
    var isFlat: Bool { end - warm <= max(16 << 20, warm / 4) }

    mutating func sample(_ keyPath: WritableKeyPath<MemoryFigures, Int>) {
        let rss = residentSetSize()
        self[keyPath: keyPath] = rss
        peak = max(peak, rss)
    }
}

/// How long a call may take beyond its own timeout before it counts as an overrun: scheduling on a loaded
/// 2-core machine, not the library's deadline handling.
let overrunSlack: Duration = .seconds(1)

/// Calls with a timeout, timed: the ones that returned later than their timeout (plus ``overrunSlack``) and the
/// ones still running past it when the report is made.
final class CallTracker: Sendable {
    struct Overrun: Codable, Sendable, CustomStringConvertible {
        var call: String
        var seconds: Double
        var limit: Double
        var stillRunning: Bool
        var description: String {
            String(format: "%@ took %.1f s (limit %.0f s)%@", call, seconds, limit, stillRunning ? ", still running" : "")
        }
    }

    private struct State {
        var nextID = 0
        var running: [Int: (call: String, start: ContinuousClock.Instant, limit: Duration)] = [:]
        var overruns: [Overrun] = []
        var count = 0
    }

    private let state = Mutex(State())

    /// Runs `body`, a call whose own timeout is `limit`, and records it if it overran.
    func timed<T>(_ call: String, limit: Duration, _ body: () async throws -> T) async throws -> T {
        let start = ContinuousClock.now
        let id = state.withLock { state in
            state.nextID += 1
            state.count += 1
            state.running[state.nextID] = (call, start, limit)
            return state.nextID
        }
        defer {
            let elapsed = ContinuousClock.now - start
            state.withLock { state in
                state.running[id] = nil
                if elapsed > limit + overrunSlack {
                    state.overruns.append(Overrun(call: call, seconds: elapsed.seconds, limit: limit.seconds,
                                                  stillRunning: false))
                }
            }
        }
        return try await body()
    }

    /// Records a call timed by its caller (a confirmation awaited long after its publish started).
    func record(_ call: String, started: ContinuousClock.Instant, limit: Duration) {
        let elapsed = ContinuousClock.now - started
        state.withLock { state in
            state.count += 1
            if elapsed > limit + overrunSlack {
                state.overruns.append(Overrun(call: call, seconds: elapsed.seconds, limit: limit.seconds,
                                              stillRunning: false))
            }
        }
    }

    /// Calls made so far.
    var count: Int { state.withLock { $0.count } }

    /// The overruns, with the calls still running past their limit now.
    func overruns() -> [Overrun] {
        let now = ContinuousClock.now
        return state.withLock { state in
            state.overruns + state.running.values.compactMap { call in
                let elapsed = now - call.start
                guard elapsed > call.limit + overrunSlack else { return nil }
                return Overrun(call: call.call, seconds: elapsed.seconds, limit: call.limit.seconds, stillRunning: true)
            }
        }
    }
}

/// Failures of one kind, counted: by error code and retryability.
struct FailureCount: Codable, Sendable, Hashable {
    var code: String
    var retryable: Bool
    var count: Int
    var example: String
}

/// Counts failures by code and retryability.
final class FailureLog: Sendable {
    private let failures = Mutex<[String: FailureCount]>([:])

    func record(_ error: any Error) {
        let code: String
        let retryable: Bool
        if let error = error as? RabbitMQError {
            code = error.code.description
            retryable = error.isRetryable
        } else {
            code = String(describing: type(of: error))
            retryable = false
        }
        let key = "\(code)/\(retryable)"
        failures.withLock { failures in
            failures[key, default: FailureCount(code: code, retryable: retryable, count: 0,
                                                example: String(describing: error).prefix(300).description)]
                .count += 1
        }
    }

    var all: [FailureCount] { failures.withLock { Array($0.values) }.sorted { $0.count > $1.count } }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// Writes `value` as JSON to `path` (a child's result for the coordinator).
func writeJSON(_ value: some Encodable, to path: String) throws {
    let data = try JSONEncoder().encode(value)
    try data.write(to: URL(fileURLWithPath: path), options: .atomic)
}

/// Reads a child's JSON result.
func readJSON<T: Decodable>(_ type: T.Type, from path: String) throws -> T {
    try JSONDecoder().decode(type, from: Data(contentsOf: URL(fileURLWithPath: path)))
}

/// Runs `body` when the process gets SIGTERM or SIGINT (on a dispatch queue, not in the signal handler), for as long
/// as the returned sources live. Keep them with `withExtendedLifetime`: `_ = sources` is no use, and in a release
/// build they were freed right after this call, so the process no longer heard SIGTERM.
func onTermination(_ body: @escaping @Sendable () -> Void) -> [any DispatchSourceSignal] {
    [SIGTERM, SIGINT].map { signalNumber in
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler(handler: body)
        source.resume()
        return source
    }
}

/// Prints a line at once (stdout goes to a log file in the child processes).
func say(_ line: String) {
    print(line)
    fflush(nil)
}

/// State shared between tasks of the soak (a `Mutex` in a class, so that closures can capture it).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { mutex = Mutex(value) }

    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        try mutex.withLock { try body(&$0) }
    }

    var value: Value { mutex.withLock { $0 } }
}
