import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A producer or consumer process started by the coordinator: this same executable with a subcommand, its output
/// in a log file.
final class ChildProcess: Sendable {
    let name: String
    let logPath: String
    private let pid: pid_t
    private let status = Locked<Int32?>(nil)

    /// Starts `rabbitmq-chaos arguments…` with stdout and stderr in `logPath`.
    init(name: String, arguments: [String], logPath: String) throws {
        self.name = name
        self.logPath = logPath
        try? FileManager.default.removeItem(atPath: logPath)
        let executable = Bundle.main.executableURL?.path ?? CommandLine.arguments[0]
        pid = try Spawn.start([executable] + arguments, outputPath: logPath)
    }

    /// The exit status once it has exited (reaped here), `nil` while it runs.
    var exitStatus: Int32? {
        status.withLock { status in
            if status == nil { status = Spawn.poll(pid) }
            return status
        }
    }

    var isRunning: Bool { exitStatus == nil }

    /// Waits for the process to exit, at most `timeout`; returns whether it did.
    func wait(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(200))
        }
        return !isRunning
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. Returns whether SIGKILL was needed.
    @discardableResult
    func stop(grace: Duration) async -> Bool {
        guard isRunning else { return false }
        kill(pid, SIGTERM)
        if await wait(timeout: grace) { return false }
        kill(pid, SIGKILL)
        _ = await wait(timeout: .seconds(10))
        return true
    }

    /// SIGKILL now (the coordinator is interrupted).
    func killNow() {
        if isRunning { kill(pid, SIGKILL) }
    }
}
