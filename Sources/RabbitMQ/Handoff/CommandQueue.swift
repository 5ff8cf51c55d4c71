import Synchronization

/// A command that tasks hand to an I/O thread through a ``CommandQueue``.
protocol HandoffCommand: Sendable {
    /// Whether the command may wait for the thread's next wake rather than wake it, when the thread allows that
    /// (``CommandQueue/prepareToSleep(acksMayWait:)``): settlements, which nobody awaits.
    var mayWaitForTheNextWake: Bool { get }
}

/// The queue through which tasks hand commands to a connection's I/O thread (the engine's is
/// `EngineCommandQueue`; generic, so that this folder names no engine type).
///
/// Submitting takes a lock and appends; it signals the thread's wake-up descriptor only when the thread is
/// asleep in `poll()` and has not been signalled yet, so a busy thread is never woken per command. Settlements
/// do not signal at all while the thread sleeps in a short poll that lets them wait (see `IOLoop.sleep()`).
final class CommandQueue<Command: HandoffCommand>: Sendable {
    private struct State {
        var commands: [Command] = []
        var sleeping = false
        var signalled = false
        var acksMayWait = false
        var terminal: RabbitMQError?
    }

    private let state = StateLock(State())
    let wakeup: Wakeup

    init() throws(RabbitMQError) {
        wakeup = try Wakeup()
    }

    /// Hands `command` to the I/O thread.
    /// - Throws: the connection's final error once the I/O thread has stopped.
    func submit(_ command: Command) throws(RabbitMQError) {
        let shouldSignal = try state.withLock { state throws(RabbitMQError) -> Bool in
            if let terminal = state.terminal { throw terminal }
            state.commands.append(command)
            guard state.sleeping, !state.signalled, !(state.acksMayWait && command.mayWaitForTheNextWake) else {
                return false
            }
            state.signalled = true
            return true
        }
        if shouldSignal { wakeup.signal() }
    }

    /// Moves every pending command into `batch` (which the caller keeps empty between calls).
    func takeAll(into batch: inout [Command]) {
        state.withLock { state in swap(&state.commands, &batch) }
    }

    /// Marks the thread asleep unless commands are waiting; returns whether it may poll.
    /// - Parameter acksMayWait: settlements submitted during this sleep do not wake the thread; it must then
    ///   poll briefly.
    func prepareToSleep(acksMayWait: Bool) -> Bool {
        state.withLock { state in
            guard state.commands.isEmpty else { return false }
            state.sleeping = true
            state.acksMayWait = acksMayWait
            return true
        }
    }

    /// Marks the thread awake after `poll()` returned.
    func didWake() {
        let wasSignalled = state.withLock { state in
            state.sleeping = false
            state.acksMayWait = false
            defer { state.signalled = false }
            return state.signalled
        }
        if wasSignalled { wakeup.drain() }
    }

    /// Refuses further commands with `error` and returns those not yet taken, for the thread to fail.
    func terminate(with error: RabbitMQError) -> [Command] {
        state.withLock { state in
            if state.terminal == nil { state.terminal = error }
            defer { state.commands.removeAll() }
            return state.commands
        }
    }

    /// The error that stopped the connection, once it has stopped.
    var terminalError: RabbitMQError? { state.withLock { $0.terminal } }
}
