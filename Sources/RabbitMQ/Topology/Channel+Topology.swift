extension Channel {
    /// Declares an exchange; succeeds if it exists with the same settings.
    /// - Throws: ``RabbitMQError`` with reply code 406 when it exists with other settings (this closes the channel).
    public func declare(_ exchange: Exchange) async throws {
        try await declare(exchange, recording: true)
    }

    func declare(_ exchange: Exchange, recording: Bool) async throws {
        try exchange.validate()
        _ = try await request(.exchangeDeclare(
            name: exchange.name, type: exchange.type.rawValue, passive: false, durable: exchange.durable,
            autoDelete: exchange.autoDelete, internal: exchange.isInternal, arguments: exchange.declareArguments))
        manager.exchanges.add(exchange.name)
        if recording { manager.recorder.record(exchange) }
    }

    /// Declares a queue; succeeds if it exists with the same settings. Returns its name (the generated one for a
    /// server-named queue) and counts.
    /// - Throws: ``RabbitMQError`` with reply code 406 when it exists with other settings, 405 when another
    ///   connection holds it exclusively.
    @discardableResult
    public func declare(_ queue: Queue) async throws -> QueueInfo {
        try await declare(queue, recording: true)
    }

    func declare(_ queue: Queue, recording: Bool) async throws -> QueueInfo {
        try queue.validate()
        let reply = try await request(.queueDeclare(
            name: queue.name, passive: false, durable: queue.durable, exclusive: queue.exclusive,
            autoDelete: queue.autoDelete, arguments: queue.declareArguments))
        let info = try Self.queueInfo(reply)
        if recording { manager.recorder.record(queue, actualName: info.name) }
        return info
    }

    /// Declares every exchange, then every queue, then every binding of `topology`. Idempotent.
    /// Returns the queues' names and counts, in the topology's order.
    @discardableResult
    public func declare(_ topology: Topology) async throws -> [QueueInfo] {
        try topology.validate()
        for exchange in topology.exchanges { try await declare(exchange) }
        var queues: [QueueInfo] = []
        for queue in topology.queues { queues.append(try await declare(queue)) }
        for binding in topology.bindings { try await bind(binding) }
        return queues
    }

    /// Reports a queue's counts without creating it (a passive declare).
    /// - Throws: ``RabbitMQError`` with reply code 404 when it does not exist (this closes the channel).
    public func queueInfo(_ name: String) async throws -> QueueInfo {
        try NameValidation.validateEntityName(name, as: "queue name", operation: "queue.declare")
        let reply = try await request(.queueDeclare(name: name, passive: true, durable: false, exclusive: false,
                                                    autoDelete: false, arguments: [:]))
        return try Self.queueInfo(reply)
    }

    /// Checks that an exchange exists (a passive declare).
    /// - Throws: ``RabbitMQError`` with reply code 404 when it does not (this closes the channel).
    public func checkExchange(_ name: String) async throws {
        try NameValidation.validate(name, as: "exchange name", operation: "exchange.declare")
        _ = try await request(.exchangeDeclare(name: name, type: "", passive: true, durable: false, autoDelete: false,
                                               internal: false, arguments: [:]))
        manager.exchanges.add(name)
    }

    /// Binds a queue or an exchange to a source exchange.
    public func bind(_ binding: Binding) async throws {
        try await bind(binding, recording: true)
    }

    func bind(_ binding: Binding, recording: Bool) async throws {
        try binding.validate()
        switch binding.destination {
        case .queue(let queue):
            _ = try await request(.queueBind(queue: queue, exchange: binding.source, routingKey: binding.routingKey,
                                             arguments: binding.arguments))
        case .exchange(let destination):
            _ = try await request(.exchangeBind(destination: destination, source: binding.source,
                                                routingKey: binding.routingKey, arguments: binding.arguments))
        }
        if recording { manager.recorder.record(binding) }
    }

    /// Removes a binding.
    public func unbind(_ binding: Binding) async throws {
        try binding.validate()
        switch binding.destination {
        case .queue(let queue):
            _ = try await request(.queueUnbind(queue: queue, exchange: binding.source, routingKey: binding.routingKey,
                                               arguments: binding.arguments))
        case .exchange(let destination):
            _ = try await request(.exchangeUnbind(destination: destination, source: binding.source,
                                                  routingKey: binding.routingKey, arguments: binding.arguments))
        }
        manager.recorder.forget(binding)
    }

    /// Deletes a queue and returns how many messages it held.
    /// - Parameters:
    ///   - ifUnused: only if it has no consumers (else the broker answers 406).
    ///   - ifEmpty: only if it holds no messages (else the broker answers 406).
    @discardableResult
    public func deleteQueue(_ name: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws -> UInt32 {
        try NameValidation.validateEntityName(name, as: "queue name", operation: "queue.delete")
        guard case .messageCount(let count) = try await request(
            .queueDelete(queue: name, ifUnused: ifUnused, ifEmpty: ifEmpty))
        else { throw Self.unexpectedReply("queue.delete") }
        manager.recorder.forgetQueue(name)
        return count
    }

    /// Deletes an exchange (and its bindings).
    /// - Parameter ifUnused: only if nothing is bound to it (else the broker answers 406).
    public func deleteExchange(_ name: String, ifUnused: Bool = false) async throws {
        try NameValidation.validateEntityName(name, as: "exchange name", operation: "exchange.delete")
        _ = try await request(.exchangeDelete(name: name, ifUnused: ifUnused))
        manager.exchanges.remove(name)
        manager.recorder.forgetExchange(name)
    }

    /// Removes every ready message from a queue and returns how many there were.
    @discardableResult
    public func purge(_ queue: String) async throws -> UInt32 {
        try NameValidation.validateEntityName(queue, as: "queue name", operation: "queue.purge")
        guard case .messageCount(let count) = try await request(.queuePurge(queue: queue)) else {
            throw Self.unexpectedReply("queue.purge")
        }
        return count
    }

    private static func queueInfo(_ reply: MethodReply) throws -> QueueInfo {
        guard case .queueDeclared(let name, let messages, let consumers) = reply else {
            throw unexpectedReply("queue.declare")
        }
        return QueueInfo(name: name, messageCount: messages, consumerCount: consumers)
    }

    static func unexpectedReply(_ operation: String) -> RabbitMQError {
        RabbitMQError(.protocolError, "unexpected reply from the broker", operation: operation)
    }
}
