import CRabbitMQ
import Foundation
import Logging
import RabbitMQTestSupport
@testable import RabbitMQ

/// A ``ConnectionStateMachine`` with what ``IOLoop`` would do around it, minus the socket: actions are performed
/// as the loop performs them, except that writes are recorded in ``sent`` (and always succeed).
final class MachineHarness {
    var machine: ConnectionStateMachine
    let commands: EngineCommandQueue
    let observability = Observability(RabbitMQClient.Configuration.Observability(), logger: Logger(label: "test"))
    /// Methods and settlements written, with their channel, in order.
    private(set) var sent: [Written] = []
    /// Publishes written (by the test's `publish`, or after an unblock), with their channel.
    private(set) var written: [(OutgoingPublish, UInt16)] = []
    private(set) var events: [EngineEvent] = []
    private(set) var terminatedWith: RabbitMQError?
    /// The clock the machine is given: tests move it.
    var now = ContinuousClock.now

    enum Written: Equatable {
        case method(String, channel: UInt16)
        case settlement(AckCoalescer.Frame, channel: UInt16)
    }

    init(channelMax: Int = 16, requestTimeout: Duration = .seconds(10)) throws {
        machine = ConnectionStateMachine(channelMax: channelMax, requestTimeout: requestTimeout,
                                         logger: Logger(label: "test"))
        commands = try EngineCommandQueue()
    }

    /// The methods written since the last call, as names (`channel.open@1`).
    func takeSent() -> [String] {
        defer { sent.removeAll() }
        return sent.map {
            switch $0 {
            case .method(let name, let channel): "\(name)@\(channel)"
            case .settlement(let frame, let channel): "\(frame)@\(channel)"
            }
        }
    }

    // MARK: Events

    func receive(_ method: BrokerMethod, on channel: UInt16) {
        machine.receive(method, on: channel)
        perform()
    }

    /// A whole message's content: the header frame, then `body` in body frames of `frameSize` bytes.
    func receiveContent(on channel: UInt16, properties: MessageProperties = MessageProperties(), body: [UInt8],
                        frameSize: Int = 1000) {
        if machine.expectsHeader(on: channel) {
            machine.receiveHeader(on: channel, properties: properties,
                                  body: IncomingBody(size: body.count, pool: BodyPool()))
            perform()
        }
        var offset = 0
        while offset < body.count {
            let end = min(offset + frameSize, body.count)
            body[offset..<end].withUnsafeBytes { machine.receiveBody(on: channel, $0) }
            perform()
            offset = end
        }
    }

    func tick(after duration: Duration) {
        now += duration
        machine.tick(now: now)
        perform()
    }

    /// The end of an I/O pass: acks go out, writes complete, batches are handed over.
    func endPass() {
        machine.flushAcks()
        machine.writesFlushed()
        machine.flushBatches()
        perform()
    }

    // MARK: Commands

    /// Opens a channel and answers its channel.open.
    func openChannel(window: Int = 10) async throws -> ChannelLink {
        let pending = await Pending<ChannelLink>.start()
        machine.openChannel(window: window, pending.continuation, now: now) { number, window in
            ChannelLink(number: number, commands: commands, windowCapacity: window,
                        staleSettlements: observability)
        }
        perform()
        guard case .method("channel.open", let number)? = sent.last else {
            return try await pending.value()
        }
        receive(.reply(id: AMQP_CHANNEL_OPEN_OK_METHOD, .done), on: number)
        sent.removeAll()
        return try await pending.value()
    }

    /// Sends a request; the reply comes through the returned value.
    func request(_ method: OutgoingMethod, on link: ChannelLink, timeout: Duration? = nil, id: RequestID = 1) async
        -> Pending<MethodReply>
    {
        let pending = await Pending<MethodReply>.start()
        machine.request(Request(id: id, link: link, method: method, deadline: now + (timeout ?? .seconds(10)),
                                continuation: pending.continuation))
        perform()
        return pending
    }

    /// Submits a publish; if the machine decides to write it, it is written.
    @discardableResult
    func publish(on link: ChannelLink, exchange: String = "orders", routingKey: String = "placed",
                 mandatory: Bool = false, body: [UInt8] = [1, 2, 3], timeout: Duration = .seconds(10))
        -> PublishTicket
    {
        let ticket = PublishTicket(deadline: now + timeout, exchange: exchange)
        let publish = OutgoingPublish(link: link, message: OutgoingMessage(
            exchange: exchange, routingKey: routingKey, mandatory: mandatory, properties: MessageProperties(),
            body: Data(body)), ticket: ticket)
        if case .write(let channel, _) = machine.publish(publish) {
            written.append((publish, channel))
            machine.published(publish, on: channel)
        }
        perform()
        return ticket
    }

    func settle(_ settlement: Settlement, on link: ChannelLink) {
        machine.settle(settlement, on: link)
        perform()
    }

    func registerConsumer(_ tag: String, on link: ChannelLink, noAck: Bool = false) -> DeliveryBuffer {
        let buffer = DeliveryBuffer()
        machine.registerConsumer(link, consumerTag: tag, buffer, noAck: noAck)
        perform()
        return buffer
    }

    func closeConnection() async -> Pending<Void> {
        let pending = await Pending<Void>.start(nonThrowing: true)
        machine.closeConnection(pending.nonThrowingContinuation, now: now)
        perform()
        return pending
    }

    // MARK: Performing actions, as IOLoop does

    private var performing: [EngineAction] = []

    func perform() {
        while !machine.actions.isEmpty {
            machine.takeActions(into: &performing)
            for action in performing { perform(action) }
            performing.removeAll(keepingCapacity: true)
        }
    }

    private func perform(_ action: EngineAction) {
        switch action {
        case .send(let method, let channel, let completing):
            sent.append(.method(method.name, channel: channel))
            if let (request, link) = completing { request.succeed(.done, link: link) }
        case .sendSettlement(let frame, let channel):
            sent.append(.settlement(frame, channel: channel))
        case .writeHeldPublishes:
            while let (publish, decision) = machine.nextHeldPublish() {
                if case .write(let channel, _) = decision {
                    written.append((publish, channel))
                    machine.published(publish, on: channel)
                }
            }
        case .succeed(let request, let reply, let link):
            request.succeed(reply, link: link)
        case .fail(let request, let error):
            request.fail(error)
        case .confirmPublish(let ticket):
            ticket.complete(.success(()))
        case .failPublish(let ticket, let error, let window):
            if ticket.complete(.failure(error)) { window?.recordFailure(error) }
        case .recordPublishFailure(let window, let error):
            window.recordFailure(error)
        case .releaseSlots(let window, let count):
            window.release(count)
        case .setBlocked(let window, let blocked):
            window.setBlocked(blocked)
        case .markChannelClosed(let link, let error, let inFlight):
            link.markClosed(error, inFlight: inFlight)
        case .markKeepsNacking(let link):
            link.keepsNacking = true
        case .markSettled(let link, let settlement):
            _ = link.markSettled(settlement)
        case .dropStaleSettlement(let link, let settlement):
            link.dropStaleSettlement(settlement)
        case .unsettle(let link, let tags):
            link.unmarkSettled(tags)
        case .handOverDeliveries(let collector):
            collector.handOver()
        case .finishConsumer(let collector, let error):
            collector.finish(error)
        case .finishSink(let sink, let error):
            sink.finish(error)
        case .abandonConsumer(let collector, let link, let error):
            collector.abandon(deliveriesOf: link, ending: error)
        case .report(let event):
            events.append(event)
        case .terminateCommands(let error):
            terminatedWith = error
            _ = commands.terminate(with: error)
        }
    }
}

/// A continuation a test hands to the machine, and the task that waits on it.
struct Pending<Value: Sendable>: Sendable {
    private let box: Locked<Continuation?>
    private let task: Task<Value, any Error>

    private enum Continuation {
        case throwing(CheckedContinuation<Value, any Error>)
        case nonThrowing(CheckedContinuation<Value, Never>)
    }

    var continuation: CheckedContinuation<Value, any Error> {
        guard case .throwing(let continuation)? = box.withLock({ $0 }) else { fatalError("not a throwing one") }
        return continuation
    }

    var nonThrowingContinuation: CheckedContinuation<Value, Never> {
        guard case .nonThrowing(let continuation)? = box.withLock({ $0 }) else { fatalError("a throwing one") }
        return continuation
    }

    private init(box: Locked<Continuation?>, task: Task<Value, any Error>) {
        self.box = box
        self.task = task
    }

    static func start(nonThrowing: Bool = false) async -> Pending {
        let box = Locked<Continuation?>(nil)
        let task = Task<Value, any Error> {
            if nonThrowing {
                return await withCheckedContinuation { (continuation: CheckedContinuation<Value, Never>) in
                    box.withLock { $0 = .nonThrowing(continuation) }
                }
            }
            return try await withCheckedThrowingContinuation { continuation in
                box.withLock { $0 = .throwing(continuation) }
            }
        }
        while box.withLock({ $0 == nil }) { await Task.yield() }
        return Pending(box: box, task: task)
    }

    /// The outcome, once the machine's actions resumed the continuation.
    func value() async throws -> Value {
        try await task.value
    }

    /// The error it failed with.
    func error() async -> (any Error)? {
        if case .failure(let error) = await task.result { return error }
        return nil
    }
}
