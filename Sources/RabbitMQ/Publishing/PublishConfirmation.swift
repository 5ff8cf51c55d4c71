/// The pending broker confirmation of one published message.
///
/// ``wait()`` returns once the broker has taken responsibility for the message (basic.ack), and throws a
/// ``RabbitMQError`` when it refused it (``RabbitMQError/Code/publishNacked``), returned it as unroutable
/// (``RabbitMQError/Code/unroutable``, mandatory publishes only), did not confirm it within the confirm
/// timeout (``RabbitMQError/Code/timeout``), or the channel or connection failed first. Without publisher
/// confirms on the channel, it returns once the message is written to the socket.
public struct PublishConfirmation: Sendable {
    let ticket: PublishTicket

    /// Waits for the broker's verdict on the message.
    /// - Throws: ``RabbitMQError`` as described on the type, or `CancellationError`.
    nonisolated(nonsending) public func wait() async throws {
        try await ticket.wait()
    }

    /// Whether the verdict is in (confirmed or failed).
    public var isSettled: Bool { ticket.isCompleted }
}
