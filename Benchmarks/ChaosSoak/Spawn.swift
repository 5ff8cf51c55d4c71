import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Starting processes with `posix_spawn` and reaping them with `waitpid`, instead of Foundation's `Process`:
/// under heavy load its termination handler sometimes never ran, leaving a zombie and the soak waiting forever.
enum Spawn {
    /// Starts `arguments` (the first one is looked up on PATH) with stdin from /dev/null and stdout and stderr
    /// into the file `outputPath`. Returns the pid.
    static func start(_ arguments: [String], outputPath: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
        guard result == 0 else {
            throw ClusterError(description: "cannot start \(arguments[0]): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// The exit status of a `waitpid` status word: the code, or 128 + the signal that ended the process.
    static func exitStatus(_ status: Int32) -> Int32 {
        status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Waits for `pid` to exit on a thread of its own (never on the cooperative pool) and returns its exit status.
    static func wait(_ pid: pid_t) async -> Int32 {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) == -1, errno == EINTR {}
                continuation.resume(returning: exitStatus(status))
            }
            thread.start()
        }
    }

    /// The exit status of `pid` if it has exited (and reaps it), `nil` while it runs.
    static func poll(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid { return exitStatus(status) }
        return result == -1 && errno == ECHILD ? -1 : nil
    }
}
