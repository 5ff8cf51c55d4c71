import Testing

@testable import RabbitMQ

@Suite("Queue worker policy")
struct QueueWorkerPolicyTests {
    @Test func onlyErrorsRetryingCannotFixEndARunningWorker() {
        let ending = [
            RabbitMQError(.channelClosed, "refused", replyCode: 403, replyText: "ACCESS_REFUSED"),
            RabbitMQError(.connectionClosed, "refused", replyCode: 403),
            RabbitMQError(.clientClosed, "closed"),
            RabbitMQError(.authenticationFailed, "wrong password"),
            RabbitMQError(.vhostNotFound, "no vhost"),
            RabbitMQError(.invalidArgument, "bad"),
        ]
        for error in ending {
            #expect(QueueWorker.endsWorker(error, hasConsumed: true), "\(error)")
        }
        let healed = [
            RabbitMQError(.channelClosed, "consumer timeout", replyCode: 406, replyText: "PRECONDITION_FAILED"),
            RabbitMQError(.channelClosed, "queue gone", replyCode: 404, replyText: "NOT_FOUND"),
            RabbitMQError(.consumerCancelled, "queue deleted"),
            RabbitMQError(.connectionLost, "recovery gave up"),
            RabbitMQError(.connectionRefused, "broker down"),
            RabbitMQError(.timeout, "slow broker"),
        ]
        for error in healed {
            #expect(!QueueWorker.endsWorker(error, hasConsumed: true), "\(error)")
        }
    }

    @Test func beforeConsumingOnceAnErrorThatIsNotRetryableEndsTheWorker() {
        // A queue that is not there at the start is a configuration error; later it is a broker action.
        let missing = RabbitMQError(.channelClosed, "no queue", replyCode: 404, replyText: "NOT_FOUND")
        #expect(QueueWorker.endsWorker(missing, hasConsumed: false))
        #expect(!QueueWorker.endsWorker(missing, hasConsumed: true))
        #expect(!QueueWorker.endsWorker(RabbitMQError(.connectionRefused, "broker down"), hasConsumed: false))
    }

    @Test func settingsAreCheckedBeforeRunning() throws {
        try QueueWorker.Configuration(queue: "q").validate()
        #expect(QueueWorker.Configuration(queue: "q").handlerTimeout == .seconds(300))
        #expect(throws: RabbitMQError.self) {
            try QueueWorker.Configuration(queue: "q", handlerTimeout: .zero).validate()
        }
        // A topology that declares the work queue unlike the retry topology would be refused by the broker.
        let retry = RetryTopology(workQueue: Queue("q"), policy: RetryPolicy())
        #expect(throws: RabbitMQError.self) {
            try QueueWorker.Configuration(queue: "q", retry: retry, topology: Topology { Queue("q") }).validate()
        }
        let owned = QueueWorker.Configuration(queue: "q", retry: retry, topology: Topology {
            Exchange("orders", type: .topic)
            Binding.queue("q", to: "orders", routingKey: "#")
        }).ownedTopology
        #expect(owned.queues == retry.topology.queues)
        #expect(owned.exchanges.map(\.name) == ["orders"])
        #expect(owned.bindings.count == 1)
    }

    @Test func anEventBroadcasterHandsEventsToEverySubscriberAndEndsTheirStreams() async {
        let broadcaster = EventBroadcaster<Int>()
        let first = broadcaster.subscribe()
        let second = broadcaster.subscribe()
        broadcaster.emit(1)
        broadcaster.emit(2)
        broadcaster.finish()
        broadcaster.emit(3)
        var seenByFirst: [Int] = []
        for await event in first { seenByFirst.append(event) }
        var seenBySecond: [Int] = []
        for await event in second { seenBySecond.append(event) }
        #expect(seenByFirst == [1, 2])
        #expect(seenBySecond == [1, 2])
        var late: [Int] = []
        for await event in broadcaster.subscribe() { late.append(event) }
        #expect(late.isEmpty)
    }
}
