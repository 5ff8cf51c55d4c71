#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
@testable import RabbitMQ
import Testing

@Suite("Command queue")
struct CommandQueueTests {
    /// Whether the queue's wake-up descriptor is readable, that is, a sleeping I/O thread would wake.
    private func wakes(_ queue: EngineCommandQueue) -> Bool {
        var descriptor = pollfd(fd: queue.wakeup.readDescriptor, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 1
    }

    private func ack(_ tag: UInt64, _ queue: EngineCommandQueue) -> EngineCommand {
        .settle(ChannelLink.unserved(commands: queue), .ack(deliveryTag: tag, multiple: false))
    }

    private func otherCommand() -> EngineCommand {
        .abandonRequest(1, RabbitMQError(.timeout, "test"))
    }

    @Test func aCommandWakesASleepingThreadOnceAndNeverABusyOne() throws {
        let queue = try EngineCommandQueue()
        try queue.submit(otherCommand())
        #expect(!wakes(queue), "a busy thread takes commands on its next pass")
        #expect(!queue.prepareToSleep(acksMayWait: false), "commands are waiting: no sleep")

        var batch: [EngineCommand] = []
        queue.takeAll(into: &batch)
        #expect(batch.count == 1)
        #expect(queue.prepareToSleep(acksMayWait: false))
        try queue.submit(otherCommand())
        #expect(wakes(queue))
        try queue.submit(ack(1, queue))
        queue.didWake()
        #expect(!wakes(queue), "didWake drains the signal, which was written once")
    }

    @Test func acksWaitForTheNextWakeOnlyWhenTheThreadAllowsIt() throws {
        let queue = try EngineCommandQueue()
        var batch: [EngineCommand] = []

        #expect(queue.prepareToSleep(acksMayWait: true))
        try queue.submit(ack(1, queue))
        try queue.submit(.settle(ChannelLink.unserved(commands: queue),
                                 .reject(deliveryTag: 2, requeue: false)))
        #expect(!wakes(queue), "settlements wait for the thread's short poll to end")
        try queue.submit(otherCommand())
        #expect(wakes(queue), "any other command wakes it")
        queue.didWake()
        queue.takeAll(into: &batch)
        #expect(batch.count == 3, "nothing is lost or reordered")
        guard case .settle(_, .ack(deliveryTag: 1, multiple: false)) = batch[0] else {
            Issue.record("first: \(batch[0])")
            return
        }

        // The allowance lasts one sleep.
        #expect(queue.prepareToSleep(acksMayWait: false))
        try queue.submit(ack(3, queue))
        #expect(wakes(queue))
        queue.didWake()
    }

    @Test func aStoppedQueueRefusesCommandsWithItsError() throws {
        let queue = try EngineCommandQueue()
        try queue.submit(ack(1, queue))
        let pending = queue.terminate(with: RabbitMQError(.connectionLost, "gone"))
        #expect(pending.count == 1)
        #expect(throws: RabbitMQError.self) { try queue.submit(ack(2, queue)) }
        #expect(queue.terminalError?.code == .connectionLost)
    }

    /// A command of the queue's own tests: the queue knows commands only as ``HandoffCommand``s.
    private struct Note: HandoffCommand {
        let number: Int
        let mayWaitForTheNextWake: Bool
    }

    @Test func theQueueCarriesAnyHandoffCommandInOrder() throws {
        let queue = try CommandQueue<Note>()
        var descriptor = pollfd(fd: queue.wakeup.readDescriptor, events: Int16(POLLIN), revents: 0)
        #expect(queue.prepareToSleep(acksMayWait: true))
        try queue.submit(Note(number: 1, mayWaitForTheNextWake: true))
        #expect(poll(&descriptor, 1, 0) == 0, "a command that may wait does not wake the thread")
        try queue.submit(Note(number: 2, mayWaitForTheNextWake: false))
        #expect(poll(&descriptor, 1, 0) == 1)
        queue.didWake()
        var batch: [Note] = []
        queue.takeAll(into: &batch)
        #expect(batch.map(\.number) == [1, 2])
    }
}
