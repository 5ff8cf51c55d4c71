extension ChannelOperations {
    /// Fetches one message from `queue` (basic.get), or `nil` if it is empty. Prefer a consumer for a stream of
    /// messages: each get is a round trip. With manual acknowledgement, settle the delivery before its channel
    /// closes (for a client, before the client closes).
    public func get(from queue: String, acknowledgement: ConsumeOptions.Acknowledgement = .manual) async throws
        -> Delivery?
    {
        try NameValidation.validateEntityName(queue, as: "queue name", operation: "basic.get")
        return try await withChannel { channel in
            switch try await channel.request(.basicGet(queue: queue, noAck: acknowledgement != .manual)) {
            case .message(let message): return Delivery(message)
            case .getEmpty: return nil
            default: throw Channel.unexpectedReply("basic.get")
            }
        }
    }
}
