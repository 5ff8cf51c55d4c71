internal import CRabbitMQ

extension RabbitMQError {
    /// The connection's error for librabbitmq status `status`, returned while doing `activity`.
    init(status: Int32, while activity: String) {
        let detail = String(cString: amqp_error_string2(status))
        switch status {
        case AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue:
            self.init(.connectionLost, "the broker missed two heartbeats: connection presumed dead",
                      operation: activity)
        case AMQP_STATUS_BAD_AMQP_DATA.rawValue, AMQP_STATUS_UNKNOWN_CLASS.rawValue,
             AMQP_STATUS_UNKNOWN_METHOD.rawValue, AMQP_STATUS_UNEXPECTED_STATE.rawValue:
            self.init(.protocolError, "protocol error while \(activity): \(detail)", operation: activity,
                      isRetryable: true)
        default:
            self.init(.connectionLost, "connection lost while \(activity): \(detail)", operation: activity)
        }
    }
}
