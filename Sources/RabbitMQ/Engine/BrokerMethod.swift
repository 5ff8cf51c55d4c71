/// A method frame from the broker, copied out of librabbitmq's memory into Swift values: what
/// ``ConnectionStateMachine`` is given.
enum BrokerMethod {
    /// The method a broker's channel.close or connection.close names as the one that failed.
    struct FailedMethod: Equatable {
        /// The class and method id, as ``OutgoingMethod/number``.
        let number: UInt32
        /// Its AMQP name (`queue.declare`), if known.
        let name: String?
    }

    case connectionClose(replyCode: UInt16, replyText: String, failed: FailedMethod?)
    case connectionCloseOk
    case connectionBlocked(reason: String)
    case connectionUnblocked
    case channelClose(replyCode: UInt16, replyText: String, failed: FailedMethod?)
    case channelCloseOk
    case channelFlow(active: Bool)
    case deliver(consumerTag: String, deliveryTag: UInt64, isRedelivered: Bool, exchange: String, routingKey: String)
    case getOk(deliveryTag: UInt64, isRedelivered: Bool, exchange: String, routingKey: String)
    case returned(replyCode: UInt16, replyText: String, exchange: String, routingKey: String)
    case ack(deliveryTag: UInt64, multiple: Bool)
    case nack(deliveryTag: UInt64, multiple: Bool)
    /// The broker cancelled a consumer (its queue was deleted or failed over).
    case cancel(consumerTag: String, noWait: Bool)
    case cancelOk(consumerTag: String)
    /// Any other reply to a request (`queue.declare-ok`, `basic.get-empty`, ...): its number and what it carries.
    case reply(id: UInt32, MethodReply)
}
