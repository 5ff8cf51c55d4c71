extension RabbitMQClient {
    /// Consumes `queue` on a channel of its own, with at most `prefetch` unacknowledged deliveries.
    /// Ending the loop over the result (or ``Consumer/cancel()``) cancels the consumer and closes its
    /// channel; unacknowledged deliveries go back to the queue.
    public func consume(_ queue: String, prefetch: UInt16 = 100, options: ConsumeOptions = ConsumeOptions())
        async throws -> Consumer
    {
        guard prefetch > 0 else {
            throw RabbitMQError(.invalidArgument, "prefetch must be at least 1: 0 would mean unlimited buffering",
                                operation: "basic.qos")
        }
        let channel = try await openChannel()
        do {
            try await channel.setPrefetch(prefetch)
            return try await channel.consume(queue, options: options, ownsChannel: true)
        } catch {
            try? await channel.close()
            throw error
        }
    }
}
