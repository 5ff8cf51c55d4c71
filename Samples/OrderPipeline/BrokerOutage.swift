import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Whether the run has stopped the broker: the monitor then shows the last known queue depths.
final class BrokerDownFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    var isDown: Bool {
        get { flag.load(ordering: .relaxed) }
        set { flag.store(newValue, ordering: .relaxed) }
    }
}

/// Shell commands that stop the broker and start it again on the same data (`make demo` passes
/// `scripts/broker.sh stop NAME` and `scripts/broker.sh restart NAME`).
struct BrokerControl: Sendable {
    /// Stops the broker.
    var stop: String
    /// Starts it again, with its durable queues and persistent messages.
    var start: String

    /// Runs `command` with `/bin/sh -c`, its output discarded, and waits for it on a thread of its own with
    /// `waitpid`. (Foundation's `Process` waits for the end of a pipe that the broker it starts inherits, and so
    /// would wait for as long as the broker runs.)
    /// - Throws: ``PipelineError`` when it cannot start or exits with a non-zero status.
    static func run(_ command: String) async throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for descriptor: Int32 in [0, 1, 2] {
            let mode = descriptor == 0 ? O_RDONLY : O_WRONLY
            posix_spawn_file_actions_addopen(&actions, descriptor, "/dev/null", mode, 0)
        }
        let words: [String] = ["/bin/sh", "-c", command]
        let arguments: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { for argument in arguments { free(argument) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, "/bin/sh", &actions, nil, arguments, environ)
        guard spawned == 0 else { throw PipelineError("cannot run '\(command)': error \(spawned)") }
        let child = pid
        let status = await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            Thread {
                var status: Int32 = 0
                while waitpid(child, &status, 0) == -1, errno == EINTR {}
                continuation.resume(returning: status)
            }.start()
        }
        guard status == 0 else { throw PipelineError("'\(command)' exited with status \(status)") }
    }
}

extension PipelineRun {
    /// Stops the broker once ``PipelineOptions/outageAfter`` of the events are written, for
    /// ``PipelineOptions/brokerOutage``, then starts it again. The order service goes on writing meanwhile; the
    /// relay's publishes fail, the outbox's backlog grows, and the relay publishes it once the broker is back.
    func stopTheBroker(progress: OrderService.Progress, brokerDown: (Bool) -> Void) async throws {
        guard let outage = options.brokerOutage, outage > .zero, let control = options.brokerControl else { return }
        let deadline = ContinuousClock.now + options.timeout
        while progress.total == 0 || Double(progress.published) < Double(progress.total) * options.outageAfter {
            guard ContinuousClock.now < deadline else { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        brokerDown(true)
        try await BrokerControl.run(control.stop)
        output("--- broker stopped for \(outage.formattedSeconds): orders and their events still commit, "
               + "the outbox keeps them ---")
        try await Task.sleep(for: outage)
        output("--- starting the broker again ---")
        try await BrokerControl.run(control.start)
        brokerDown(false)
        output("--- broker back: the relay publishes the outbox's backlog ---")
    }
}
