import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process could not be started.
public struct ChildProcessError: Error, CustomStringConvertible {
    /// What failed.
    public let message: String

    /// Creates the error.
    public init(message: String) { self.message = message }

    public var description: String { message }
}

/// Starts `executable` with `arguments` and exactly `environment`, its standard input /dev/null, its standard output
/// and error into the file at `output`. Not Foundation's `Process`, which waits on the cooperative pool.
/// - Returns: The child's pid, for ``waitForExit(_:)``.
public func spawn(_ executable: String, _ arguments: [String], environment: [String: String], output: String) throws
    -> pid_t
{
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let cArgv = ([executable] + arguments).map { strdup($0) } + [nil]
    let cEnv = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        for pointer in cArgv { free(pointer) }
        for pointer in cEnv { free(pointer) }
    }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, nil, cArgv, cEnv)
    guard spawned == 0 else {
        throw ChildProcessError(message: "cannot start \(executable): \(String(cString: strerror(spawned)))")
    }
    return pid
}

/// Waits, on a thread of its own (off Swift's pool), until the child `pid` ends; its exit status, or 128 + the
/// signal that ended it.
public func waitForExit(_ pid: pid_t) async -> Int32 {
    await withCheckedContinuation { continuation in
        Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
            // WIFEXITED / WEXITSTATUS are macros Swift does not import.
            continuation.resume(returning: status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
        }.start()
    }
}

/// Runs the command-line tools the tests drive servers with (`rabbitmqctl`, `scripts/broker.sh`), one way for all.
public enum ChildProcess {
    /// Runs a program to its end and returns its exit status and its standard output and error (through a temporary
    /// file: a pipe could fill and stall it).
    ///
    /// The program runs under a shell that first closes every inherited descriptor above 2 (also those of children
    /// other tests start meanwhile), so that a node `broker.sh start` leaves running holds none of ours; a thread of
    /// its own, outside Swift's cooperative pool, waits for it: `rabbitmqctl` boots an Erlang VM, which takes
    /// seconds on a loaded machine, and blocking one of the pool's two threads that long would stall every other
    /// test.
    /// - Parameter environment: The program's environment; by default the test process's.
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil)
        async throws -> (status: Int32, output: String)
    {
        let outputPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("swiftrmq-child-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let closeAndExec = #"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; "#
            + #"exec "$@""#
        let pid: pid_t
        do {
            pid = try spawn("/bin/bash", ["-c", closeAndExec, "bash", executable] + arguments,
                            environment: environment ?? ProcessInfo.processInfo.environment, output: outputPath)
        } catch {
            throw ChildProcessError(message: "cannot run \(executable): \(error)")
        }
        let status = await waitForExit(pid)
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (status, text)
    }
}
