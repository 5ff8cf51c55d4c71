import Testing

@testable import RabbitMQ

/// What recovery sends to re-attach a channel (``RecoverableChannel/steps(for:renamed:)``), from the channel's
/// recorded ``ChannelSetup``; the integration suites (Recovery, QueueWorkerHealing) check it against a broker.
@Suite("Recoverable channel")
struct RecoverableChannelTests {
    /// A sink no I/O thread fills.
    private final class Sink: DeliverySink {
        func makeCollector() -> any DeliveryCollector { fatalError("not registered in these tests") }
        func finish(_ error: RabbitMQError?) {}
    }

    /// Resumes a consumer at a fixed offset.
    private struct Resume: ConsumerResumption {
        let offset: Int64

        func arguments(resuming recorded: FieldTable) -> FieldTable {
            var arguments = recorded
            arguments["x-stream-offset"] = .int64(offset)
            return arguments
        }
    }

    private func consumer(_ queue: String, exclusive: Bool = false, noAck: Bool = false, arguments: FieldTable = [:],
                          resumption: (any ConsumerResumption)? = nil) -> ConsumerRegistration {
        ConsumerRegistration(queue: queue, exclusive: exclusive, noAck: noAck, arguments: arguments, sink: Sink(),
                             resumption: resumption)
    }

    /// The steps as strings: the method's name and what matters of it.
    private func describe(_ steps: [RecoverableChannel.Step]) -> [String] {
        steps.map { step in
            switch step {
            case .request(.basicQos(let count, let global)): "basic.qos \(count) global=\(global)"
            case .request(let method): method.name
            case .consume(let tag, _, let registersNoAck,
                          .basicConsume(let queue, let consumerTag, let noAck, let exclusive, let arguments)):
                "consume \(tag)=\(consumerTag) \(queue) noAck=\(noAck)/\(registersNoAck) exclusive=\(exclusive) "
                    + "args=\(arguments.count)"
            case .consume(let tag, _, _, let method): "consume \(tag) with \(method.name)"
            }
        }
    }

    @Test("a plain channel is only re-opened")
    func plainChannel() {
        #expect(RecoverableChannel.steps(for: ChannelSetup(windowCapacity: 10), renamed: { $0 }).isEmpty)
    }

    @Test("prefetch, then confirms, then the consumers in tag order, with their arguments")
    func order() {
        var setup = ChannelSetup(windowCapacity: 10)
        setup.prefetch = (50, false)
        setup.confirms = true
        setup.consumers["b"] = consumer("orders", arguments: ["x-priority": .int32(5)])
        setup.consumers["a"] = consumer("audit", exclusive: true)
        #expect(describe(RecoverableChannel.steps(for: setup, renamed: { $0 })) == [
            "basic.qos 50 global=false",
            "confirm.select",
            "consume a=a audit noAck=false/false exclusive=true args=0",
            "consume b=b orders noAck=false/false exclusive=false args=1",
        ])
        guard case .consume("b", _, _, .basicConsume(_, _, _, _, let arguments)) =
            RecoverableChannel.steps(for: setup, renamed: { $0 }).last
        else {
            Issue.record("no consume step for b")
            return
        }
        #expect(arguments == ["x-priority": .int32(5)])
    }

    @Test("a consumer of a server-named queue consumes its new name")
    func renamedQueue() {
        var setup = ChannelSetup(windowCapacity: 1)
        setup.consumers["t"] = consumer("amq.gen-old")
        let steps = describe(RecoverableChannel.steps(for: setup) { $0 == "amq.gen-old" ? "amq.gen-new" : $0 })
        #expect(steps == ["consume t=t amq.gen-new noAck=false/false exclusive=false args=0"])
    }

    @Test("a no-ack consumer is registered and consumed with no-ack")
    func noAckConsumer() {
        var setup = ChannelSetup(windowCapacity: 1)
        setup.consumers["n"] = consumer("replies", noAck: true)
        #expect(describe(RecoverableChannel.steps(for: setup, renamed: { $0 })) == [
            "consume n=n replies noAck=true/true exclusive=false args=0"
        ])
    }

    @Test("a consumer's resumption sets the arguments a re-consume sends; the recorded ones stay")
    func resumedArguments() {
        var setup = ChannelSetup(windowCapacity: 1)
        setup.consumers["s"] = consumer(
            "events", arguments: ["x-stream-offset": .string("first"), "x-priority": .int32(1)],
            resumption: Resume(offset: 1200))
        guard case .consume(_, _, _, .basicConsume(_, _, _, _, let arguments)) =
            RecoverableChannel.steps(for: setup, renamed: { $0 }).first
        else {
            Issue.record("no consume step")
            return
        }
        #expect(arguments == ["x-stream-offset": .int64(1200), "x-priority": .int32(1)])
        #expect(setup.consumers["s"]?.arguments["x-stream-offset"] == .string("first"))
    }

    @Test("a stream cursor resumes after the last delivery handed out")
    func streamCursor() {
        let cursor = StreamCursor(initial: .first)
        #expect(cursor.arguments(resuming: [:])["x-stream-offset"] == StreamOffset.first.argument)
        cursor.advance(to: 41)
        #expect(cursor.arguments(resuming: ["x-priority": .int32(1)]) ==
                    ["x-priority": .int32(1), "x-stream-offset": StreamOffset.after(41).argument])
    }
}
