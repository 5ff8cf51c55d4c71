extension ChannelOperations {
    /// Declares every exchange, then every queue, then every binding of `topology`, on one channel. Idempotent:
    /// declaring what exists with the same settings succeeds.
    /// - Returns: the declared queues' names and counts, in the topology's order.
    /// - Throws: ``RabbitMQError`` with reply code 406 when something exists with other settings.
    @discardableResult
    public func declare(_ topology: Topology) async throws -> [QueueInfo] {
        try topology.validate()
        return try await withChannel { channel in
            for exchange in topology.exchanges { try await channel.declare(exchange, recording: true) }
            var queues: [QueueInfo] = []
            for queue in topology.queues { queues.append(try await channel.declare(queue, recording: true)) }
            for binding in topology.bindings { try await channel.bind(binding, recording: true) }
            return queues
        }
    }

    /// Declares an exchange; succeeds if it exists with the same settings.
    /// - Throws: ``RabbitMQError`` with reply code 406 when it exists with other settings.
    public func declare(_ exchange: Exchange) async throws {
        try exchange.validate()
        try await withChannel { try await $0.declare(exchange, recording: true) }
    }

    /// Declares a queue; succeeds if it exists with the same settings.
    /// - Returns: its name (the generated one for a server-named queue) and counts.
    /// - Throws: ``RabbitMQError`` with reply code 406 when it exists with other settings, 405 when another
    ///   connection holds it exclusively.
    @discardableResult
    public func declare(_ queue: Queue) async throws -> QueueInfo {
        try queue.validate()
        return try await withChannel { try await $0.declare(queue, recording: true) }
    }

    /// Binds a queue or an exchange to a source exchange.
    public func bind(_ binding: Binding) async throws {
        try binding.validate()
        try await withChannel { try await $0.bind(binding, recording: true) }
    }

    /// Removes a binding.
    public func unbind(_ binding: Binding) async throws {
        try binding.validate()
        try await withChannel { channel in
            switch binding.destination {
            case .queue(let queue):
                _ = try await channel.request(.queueUnbind(queue: queue, exchange: binding.source,
                                                           routingKey: binding.routingKey,
                                                           arguments: binding.arguments))
            case .exchange(let destination):
                _ = try await channel.request(.exchangeUnbind(destination: destination, source: binding.source,
                                                              routingKey: binding.routingKey,
                                                              arguments: binding.arguments))
            }
            channel.topologyKeeper?.recorder.forget(binding)
        }
    }

    /// A queue's message and consumer counts, without creating it (a passive declare).
    /// - Throws: ``RabbitMQError`` with reply code 404 when the queue does not exist.
    public func inspectQueue(_ name: String) async throws -> QueueInfo {
        try NameValidation.validateEntityName(name, as: "queue name", operation: "queue.declare")
        return try await withChannel { channel in
            try Channel.queueInfo(from: try await channel.request(.queueDeclare(
                name: name, passive: true, durable: false, exclusive: false, autoDelete: false, arguments: [:])))
        }
    }

    /// Checks that an exchange exists (a passive declare).
    /// - Throws: ``RabbitMQError`` with reply code 404 when it does not.
    public func inspectExchange(_ name: String) async throws {
        try NameValidation.validate(name, as: "exchange name", operation: "exchange.declare")
        try await withChannel { channel in
            _ = try await channel.request(.exchangeDeclare(name: name, type: "", passive: true, durable: false,
                                                           autoDelete: false, internal: false, arguments: [:]))
            channel.topologyKeeper?.exchanges.add(name)
        }
    }

    /// Deletes a queue.
    /// - Parameters:
    ///   - name: the queue.
    ///   - ifUnused: only if it has no consumers (else the broker answers 406).
    ///   - ifEmpty: only if it holds no messages (else the broker answers 406).
    /// - Returns: how many messages it held.
    @discardableResult
    public func deleteQueue(_ name: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws -> UInt32 {
        try NameValidation.validateEntityName(name, as: "queue name", operation: "queue.delete")
        return try await withChannel { channel in
            guard case .messageCount(let count) = try await channel.request(
                .queueDelete(queue: name, ifUnused: ifUnused, ifEmpty: ifEmpty))
            else { throw Channel.unexpectedReply("queue.delete") }
            channel.topologyKeeper?.recorder.forgetQueue(name)
            return count
        }
    }

    /// Deletes an exchange and its bindings.
    /// - Parameters:
    ///   - name: the exchange.
    ///   - ifUnused: only if nothing is bound to it (else the broker answers 406).
    public func deleteExchange(_ name: String, ifUnused: Bool = false) async throws {
        try NameValidation.validateEntityName(name, as: "exchange name", operation: "exchange.delete")
        try await withChannel { channel in
            _ = try await channel.request(.exchangeDelete(name: name, ifUnused: ifUnused))
            channel.topologyKeeper?.exchanges.remove(name)
            channel.topologyKeeper?.recorder.forgetExchange(name)
        }
    }

    /// Removes every ready message from a queue.
    /// - Returns: how many there were.
    @discardableResult
    public func purgeQueue(_ name: String) async throws -> UInt32 {
        try NameValidation.validateEntityName(name, as: "queue name", operation: "queue.purge")
        return try await withChannel { channel in
            guard case .messageCount(let count) = try await channel.request(.queuePurge(queue: name)) else {
                throw Channel.unexpectedReply("queue.purge")
            }
            return count
        }
    }
}

extension Channel {
    /// Declares `exchange` on this channel; `recording` adds it to what recovery declares again.
    func declare(_ exchange: Exchange, recording: Bool) async throws {
        _ = try await request(.exchangeDeclare(
            name: exchange.name, type: exchange.type.rawValue, passive: false, durable: exchange.durable,
            autoDelete: exchange.autoDelete, internal: exchange.isInternal, arguments: exchange.declareArguments))
        let keeper = topologyKeeper
        keeper?.exchanges.add(exchange.name)
        if recording { keeper?.recorder.record(exchange) }
    }

    /// Declares `queue` on this channel; `recording` adds it to what recovery declares again.
    func declare(_ queue: Queue, recording: Bool) async throws -> QueueInfo {
        let reply = try await request(.queueDeclare(
            name: queue.name, passive: false, durable: queue.durable, exclusive: queue.exclusive,
            autoDelete: queue.autoDelete, arguments: queue.declareArguments))
        let info = try Self.queueInfo(from: reply)
        if recording { topologyKeeper?.recorder.record(queue, actualName: info.name) }
        return info
    }

    /// Adds `binding` on this channel; `recording` adds it to what recovery declares again.
    func bind(_ binding: Binding, recording: Bool) async throws {
        switch binding.destination {
        case .queue(let queue):
            _ = try await request(.queueBind(queue: queue, exchange: binding.source, routingKey: binding.routingKey,
                                             arguments: binding.arguments))
        case .exchange(let destination):
            _ = try await request(.exchangeBind(destination: destination, source: binding.source,
                                                routingKey: binding.routingKey, arguments: binding.arguments))
        }
        if recording { topologyKeeper?.recorder.record(binding) }
    }

    static func queueInfo(from reply: MethodReply) throws -> QueueInfo {
        guard case .queueDeclared(let name, let messages, let consumers) = reply else {
            throw unexpectedReply("queue.declare")
        }
        return QueueInfo(name: name, messageCount: messages, consumerCount: consumers)
    }

    static func unexpectedReply(_ operation: String) -> RabbitMQError {
        RabbitMQError(.protocolError, "unexpected reply from the broker", operation: operation)
    }
}
