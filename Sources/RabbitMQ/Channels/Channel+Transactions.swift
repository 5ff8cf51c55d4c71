extension Channel {
    /// Puts the channel in transaction mode (AMQP `tx.select`): from now on its publishes and its settlements
    /// (acks, nacks, rejects of deliveries on this channel) take effect only on ``commitTransaction()``, and
    /// ``rollbackTransaction()`` discards them.
    ///
    /// Transactions are the slow alternative to publisher confirms: each commit is a round trip that waits for
    /// the broker to write the transaction (RabbitMQ measures them hundreds of times slower than a confirm window
    /// for single-message transactions). Prefer ``enableConfirms(window:)`` to know that messages arrived; use a
    /// transaction when several publishes and acks must take effect together or not at all, on one queue's node.
    /// A channel is in confirm mode or in transaction mode, never both. After a connection recovery the channel
    /// is in transaction mode again, but the transaction under way was lost: see ``commitTransaction()``.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` if the channel has publisher confirms on.
    public func enableTransactions() async throws {
        guard !modes.confirms else {
            throw RabbitMQError(.invalidArgument, "a channel with publisher confirms cannot use transactions",
                                operation: "tx.select")
        }
        let deadline = ContinuousClock.now + host.requestTimeout
        let (link, engine) = try await activeSession(for: "tx.select", until: deadline)
        _ = try await engine.request(.txSelect, on: link, until: deadline)
        recordTransactions(on: link)
    }

    /// Commits the transaction: the publishes and settlements since the last commit or rollback take effect.
    /// Settle no delivery of this channel while the commit is under way.
    /// - Throws: ``RabbitMQError/Code/transactionLost`` if the connection was lost and recovered since the
    ///   transaction began: the broker discarded it, and whatever was done on the recovered channel since is
    ///   rolled back too, so that no half of the transaction is committed later. Run it again.
    ///   ``RabbitMQError/Code/invalidArgument`` without ``enableTransactions()``. If the connection is lost during
    ///   the commit, whether it took effect is unknown (``RabbitMQError/Code/connectionLost``).
    public func commitTransaction() async throws {
        try await endTransaction(.txCommit)
    }

    /// Rolls the transaction back: its publishes are discarded, and the deliveries it acked, nacked or rejected
    /// are unsettled again (still held by this channel's consumer: settle them again in the next transaction).
    /// Settle no delivery of this channel while the rollback is under way. After a connection recovery the
    /// broker has discarded the transaction already; this then rolls back what was done on the recovered channel.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` without ``enableTransactions()``, or the channel's failure.
    public func rollbackTransaction() async throws {
        try await endTransaction(.txRollback)
    }

    /// Runs `body` in a transaction: commits if it returns, rolls back if it throws (and rethrows).
    ///
    /// ```swift
    /// try await channel.enableTransactions()
    /// try await channel.withTransaction { channel in
    ///     try await channel.publish(debit, routingKey: "ledger")
    ///     try await channel.publish(credit, routingKey: "ledger")
    ///     try delivery.ack()
    /// }
    /// ```
    /// - Throws: what `body` throws, or what ``commitTransaction()`` throws (``RabbitMQError/Code/transactionLost``
    ///   after a connection recovery: run the transaction again).
    public func withTransaction<T: Sendable>(_ body: (Channel) async throws -> T) async throws -> T {
        let result: T
        do {
            result = try await body(self)
        } catch {
            try? await rollbackTransaction()
            throw error
        }
        try await commitTransaction()
        return result
    }

    private func endTransaction(_ method: OutgoingMethod) async throws {
        let deadline = ContinuousClock.now + host.requestTimeout
        let (link, engine) = try await activeSession(for: method.name, until: deadline)
        let modes = modes
        guard modes.transactions else {
            throw RabbitMQError(.invalidArgument, "the channel is not in transaction mode: call enableTransactions() "
                                    + "first", operation: method.name)
        }
        guard modes.transactionLink === link else {
            // Recovered since the transaction began: the broker discarded it with the old channel. Discard what the
            // recovered channel holds too, so that nothing of this transaction is committed later.
            _ = try await engine.request(.txRollback, on: link, until: deadline)
            recordTransactions(on: link)
            if case .txRollback = method { return }
            throw RabbitMQError(.transactionLost, "the connection was lost and recovered during the transaction; "
                                    + "the broker discarded it", operation: method.name)
        }
        _ = try await engine.request(method, on: link, until: deadline)
    }
}
