internal import CRabbitMQ

/// A method the client sends, in Swift values; the I/O thread turns it into librabbitmq's struct.
enum OutgoingMethod: Sendable {
    case channelOpen
    case channelClose(replyCode: UInt16, replyText: String)
    case channelCloseOk
    case channelFlowOk(active: Bool)
    case connectionClose(replyCode: UInt16, replyText: String)
    case connectionCloseOk
    case exchangeDeclare(name: String, type: String, passive: Bool, durable: Bool, autoDelete: Bool,
                         internal: Bool, arguments: FieldTable)
    case exchangeDelete(name: String, ifUnused: Bool)
    case exchangeBind(destination: String, source: String, routingKey: String, arguments: FieldTable)
    case exchangeUnbind(destination: String, source: String, routingKey: String, arguments: FieldTable)
    case queueDeclare(name: String, passive: Bool, durable: Bool, exclusive: Bool, autoDelete: Bool,
                      arguments: FieldTable)
    case queueBind(queue: String, exchange: String, routingKey: String, arguments: FieldTable)
    case queueUnbind(queue: String, exchange: String, routingKey: String, arguments: FieldTable)
    case queuePurge(queue: String)
    case queueDelete(queue: String, ifUnused: Bool, ifEmpty: Bool)
    case basicQos(prefetchCount: UInt16, global: Bool)
    case basicConsume(queue: String, consumerTag: String, noAck: Bool, exclusive: Bool, arguments: FieldTable)
    case basicCancel(consumerTag: String)
    case basicCancelOk(consumerTag: String)
    case basicGet(queue: String, noAck: Bool)
    case basicRecover(requeue: Bool)
    case confirmSelect
    case txSelect
    case txCommit
    case txRollback

    /// The AMQP name, for errors and logs: `queue.declare`.
    var name: String {
        switch self {
        case .channelOpen: "channel.open"
        case .channelClose: "channel.close"
        case .channelCloseOk: "channel.close-ok"
        case .channelFlowOk: "channel.flow-ok"
        case .connectionClose: "connection.close"
        case .connectionCloseOk: "connection.close-ok"
        case .exchangeDeclare: "exchange.declare"
        case .exchangeDelete: "exchange.delete"
        case .exchangeBind: "exchange.bind"
        case .exchangeUnbind: "exchange.unbind"
        case .queueDeclare: "queue.declare"
        case .queueBind: "queue.bind"
        case .queueUnbind: "queue.unbind"
        case .queuePurge: "queue.purge"
        case .queueDelete: "queue.delete"
        case .basicQos: "basic.qos"
        case .basicConsume: "basic.consume"
        case .basicCancel: "basic.cancel"
        case .basicCancelOk: "basic.cancel-ok"
        case .basicGet: "basic.get"
        case .basicRecover: "basic.recover"
        case .confirmSelect: "confirm.select"
        case .txSelect: "tx.select"
        case .txCommit: "tx.commit"
        case .txRollback: "tx.rollback"
        }
    }

    /// The method's number (class and method id), as a broker's channel.close or connection.close names the
    /// method that failed.
    var number: amqp_method_number_t {
        switch self {
        case .channelOpen: AMQP_CHANNEL_OPEN_METHOD
        case .channelClose: AMQP_CHANNEL_CLOSE_METHOD
        case .channelCloseOk: AMQP_CHANNEL_CLOSE_OK_METHOD
        case .channelFlowOk: AMQP_CHANNEL_FLOW_OK_METHOD
        case .connectionClose: AMQP_CONNECTION_CLOSE_METHOD
        case .connectionCloseOk: AMQP_CONNECTION_CLOSE_OK_METHOD
        case .exchangeDeclare: AMQP_EXCHANGE_DECLARE_METHOD
        case .exchangeDelete: AMQP_EXCHANGE_DELETE_METHOD
        case .exchangeBind: AMQP_EXCHANGE_BIND_METHOD
        case .exchangeUnbind: AMQP_EXCHANGE_UNBIND_METHOD
        case .queueDeclare: AMQP_QUEUE_DECLARE_METHOD
        case .queueBind: AMQP_QUEUE_BIND_METHOD
        case .queueUnbind: AMQP_QUEUE_UNBIND_METHOD
        case .queuePurge: AMQP_QUEUE_PURGE_METHOD
        case .queueDelete: AMQP_QUEUE_DELETE_METHOD
        case .basicQos: AMQP_BASIC_QOS_METHOD
        case .basicConsume: AMQP_BASIC_CONSUME_METHOD
        case .basicCancel: AMQP_BASIC_CANCEL_METHOD
        case .basicCancelOk: AMQP_BASIC_CANCEL_OK_METHOD
        case .basicGet: AMQP_BASIC_GET_METHOD
        case .basicRecover: AMQP_BASIC_RECOVER_METHOD
        case .confirmSelect: AMQP_CONFIRM_SELECT_METHOD
        case .txSelect: AMQP_TX_SELECT_METHOD
        case .txCommit: AMQP_TX_COMMIT_METHOD
        case .txRollback: AMQP_TX_ROLLBACK_METHOD
        }
    }

    /// basic.publish's number, as a channel.close names it when a publish failed.
    static let basicPublishNumber: UInt32 = AMQP_BASIC_PUBLISH_METHOD
    /// basic.cancel-ok's number.
    static let basicCancelOkNumber: UInt32 = AMQP_BASIC_CANCEL_OK_METHOD

    /// The replies that answer this method, or empty when it has none.
    var replies: [amqp_method_number_t] {
        switch self {
        case .channelOpen: [AMQP_CHANNEL_OPEN_OK_METHOD]
        case .channelClose: [AMQP_CHANNEL_CLOSE_OK_METHOD]
        case .connectionClose: [AMQP_CONNECTION_CLOSE_OK_METHOD]
        case .exchangeDeclare: [AMQP_EXCHANGE_DECLARE_OK_METHOD]
        case .exchangeDelete: [AMQP_EXCHANGE_DELETE_OK_METHOD]
        case .exchangeBind: [AMQP_EXCHANGE_BIND_OK_METHOD]
        case .exchangeUnbind: [AMQP_EXCHANGE_UNBIND_OK_METHOD]
        case .queueDeclare: [AMQP_QUEUE_DECLARE_OK_METHOD]
        case .queueBind: [AMQP_QUEUE_BIND_OK_METHOD]
        case .queueUnbind: [AMQP_QUEUE_UNBIND_OK_METHOD]
        case .queuePurge: [AMQP_QUEUE_PURGE_OK_METHOD]
        case .queueDelete: [AMQP_QUEUE_DELETE_OK_METHOD]
        case .basicQos: [AMQP_BASIC_QOS_OK_METHOD]
        case .basicConsume: [AMQP_BASIC_CONSUME_OK_METHOD]
        case .basicCancel: [AMQP_BASIC_CANCEL_OK_METHOD]
        case .basicGet: [AMQP_BASIC_GET_OK_METHOD, AMQP_BASIC_GET_EMPTY_METHOD]
        case .basicRecover: [AMQP_BASIC_RECOVER_OK_METHOD]
        case .confirmSelect: [AMQP_CONFIRM_SELECT_OK_METHOD]
        case .txSelect: [AMQP_TX_SELECT_OK_METHOD]
        case .txCommit: [AMQP_TX_COMMIT_OK_METHOD]
        case .txRollback: [AMQP_TX_ROLLBACK_OK_METHOD]
        case .channelCloseOk, .channelFlowOk, .connectionCloseOk, .basicCancelOk: []
        }
    }

    /// Writes the method to the socket. Returns librabbitmq's status (0 for success).
    func send(on state: amqp_connection_state_t, channel: UInt16, arena: CArena) -> Int32 {
        defer { arena.reset() }
        func send<T: BitwiseCopyable>(_ id: amqp_method_number_t, _ method: T) -> Int32 {
            var method = method
            return amqp_send_method(state, channel, id, &method)
        }
        func flag(_ value: Bool) -> amqp_boolean_t { value ? 1 : 0 }
        switch self {
        case .channelOpen:
            return send(AMQP_CHANNEL_OPEN_METHOD, amqp_channel_open_t(out_of_band: amqp_empty_bytes))
        case .channelClose(let code, let text):
            return send(AMQP_CHANNEL_CLOSE_METHOD, amqp_channel_close_t(
                reply_code: code, reply_text: arena.bytes(text), class_id: 0, method_id: 0))
        case .channelCloseOk:
            return send(AMQP_CHANNEL_CLOSE_OK_METHOD, amqp_channel_close_ok_t(dummy: 0))
        case .channelFlowOk(let active):
            return send(AMQP_CHANNEL_FLOW_OK_METHOD, amqp_channel_flow_ok_t(active: flag(active)))
        case .connectionClose(let code, let text):
            return send(AMQP_CONNECTION_CLOSE_METHOD, amqp_connection_close_t(
                reply_code: code, reply_text: arena.bytes(text), class_id: 0, method_id: 0))
        case .connectionCloseOk:
            return send(AMQP_CONNECTION_CLOSE_OK_METHOD, amqp_connection_close_ok_t(dummy: 0))
        case .exchangeDeclare(let name, let type, let passive, let durable, let autoDelete, let isInternal, let args):
            return send(AMQP_EXCHANGE_DECLARE_METHOD, amqp_exchange_declare_t(
                ticket: 0, exchange: arena.bytes(name), type: arena.bytes(type), passive: flag(passive),
                durable: flag(durable), auto_delete: flag(autoDelete), internal: flag(isInternal), nowait: 0,
                arguments: arena.table(args)))
        case .exchangeDelete(let name, let ifUnused):
            return send(AMQP_EXCHANGE_DELETE_METHOD, amqp_exchange_delete_t(
                ticket: 0, exchange: arena.bytes(name), if_unused: flag(ifUnused), nowait: 0))
        case .exchangeBind(let destination, let source, let key, let args):
            return send(AMQP_EXCHANGE_BIND_METHOD, amqp_exchange_bind_t(
                ticket: 0, destination: arena.bytes(destination), source: arena.bytes(source),
                routing_key: arena.bytes(key), nowait: 0, arguments: arena.table(args)))
        case .exchangeUnbind(let destination, let source, let key, let args):
            return send(AMQP_EXCHANGE_UNBIND_METHOD, amqp_exchange_unbind_t(
                ticket: 0, destination: arena.bytes(destination), source: arena.bytes(source),
                routing_key: arena.bytes(key), nowait: 0, arguments: arena.table(args)))
        case .queueDeclare(let name, let passive, let durable, let exclusive, let autoDelete, let args):
            return send(AMQP_QUEUE_DECLARE_METHOD, amqp_queue_declare_t(
                ticket: 0, queue: arena.bytes(name), passive: flag(passive), durable: flag(durable),
                exclusive: flag(exclusive), auto_delete: flag(autoDelete), nowait: 0, arguments: arena.table(args)))
        case .queueBind(let queue, let exchange, let key, let args):
            return send(AMQP_QUEUE_BIND_METHOD, amqp_queue_bind_t(
                ticket: 0, queue: arena.bytes(queue), exchange: arena.bytes(exchange),
                routing_key: arena.bytes(key), nowait: 0, arguments: arena.table(args)))
        case .queueUnbind(let queue, let exchange, let key, let args):
            return send(AMQP_QUEUE_UNBIND_METHOD, amqp_queue_unbind_t(
                ticket: 0, queue: arena.bytes(queue), exchange: arena.bytes(exchange),
                routing_key: arena.bytes(key), arguments: arena.table(args)))
        case .queuePurge(let queue):
            return send(AMQP_QUEUE_PURGE_METHOD, amqp_queue_purge_t(ticket: 0, queue: arena.bytes(queue), nowait: 0))
        case .queueDelete(let queue, let ifUnused, let ifEmpty):
            return send(AMQP_QUEUE_DELETE_METHOD, amqp_queue_delete_t(
                ticket: 0, queue: arena.bytes(queue), if_unused: flag(ifUnused), if_empty: flag(ifEmpty), nowait: 0))
        case .basicQos(let count, let global):
            return send(AMQP_BASIC_QOS_METHOD, amqp_basic_qos_t(prefetch_size: 0, prefetch_count: count,
                                                                global: flag(global)))
        case .basicConsume(let queue, let tag, let noAck, let exclusive, let args):
            return send(AMQP_BASIC_CONSUME_METHOD, amqp_basic_consume_t(
                ticket: 0, queue: arena.bytes(queue), consumer_tag: arena.bytes(tag), no_local: 0,
                no_ack: flag(noAck), exclusive: flag(exclusive), nowait: 0, arguments: arena.table(args)))
        case .basicCancel(let tag):
            return send(AMQP_BASIC_CANCEL_METHOD, amqp_basic_cancel_t(consumer_tag: arena.bytes(tag), nowait: 0))
        case .basicCancelOk(let tag):
            return send(AMQP_BASIC_CANCEL_OK_METHOD, amqp_basic_cancel_ok_t(consumer_tag: arena.bytes(tag)))
        case .basicGet(let queue, let noAck):
            return send(AMQP_BASIC_GET_METHOD, amqp_basic_get_t(ticket: 0, queue: arena.bytes(queue),
                                                                no_ack: flag(noAck)))
        case .basicRecover(let requeue):
            return send(AMQP_BASIC_RECOVER_METHOD, amqp_basic_recover_t(requeue: flag(requeue)))
        case .confirmSelect:
            return send(AMQP_CONFIRM_SELECT_METHOD, amqp_confirm_select_t(nowait: 0))
        case .txSelect:
            return send(AMQP_TX_SELECT_METHOD, amqp_tx_select_t(dummy: 0))
        case .txCommit:
            return send(AMQP_TX_COMMIT_METHOD, amqp_tx_commit_t(dummy: 0))
        case .txRollback:
            return send(AMQP_TX_ROLLBACK_METHOD, amqp_tx_rollback_t(dummy: 0))
        }
    }
}
