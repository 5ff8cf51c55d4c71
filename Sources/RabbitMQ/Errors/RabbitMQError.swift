/// The one error type of the library.
///
/// Switch on ``code`` to handle a kind of failure; ``isRetryable`` says whether trying the same thing again
/// later can succeed (a lost connection, a timeout) or not (a wrong password, a missing queue, bad input).
/// ``description`` never contains a password; ``debugDescription`` adds where the error was raised.
///
/// A fault is charged to the operation that caused it. An operation that fails only because another one made the
/// broker close the channel or connection they shared (a publish to a missing exchange on the shared confirm
/// channel, a declaration the broker answers by closing the connection) gets a *collateral* error: retryable,
/// without a reply code, with the other operation's error as its ``cause``.
public struct RabbitMQError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What kind of failure this is. New codes may be added, so a `switch` needs a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate let name: String
        private init(_ name: String) { self.name = name }

        public var description: String { name }

        /// Nothing listens on the broker's port.
        public static let connectionRefused = Code("connectionRefused")
        /// The broker's host name does not resolve.
        public static let hostNotFound = Code("hostNotFound")
        /// The broker refused the user name or password.
        public static let authenticationFailed = Code("authenticationFailed")
        /// The virtual host does not exist, or the user may not use it.
        public static let vhostNotFound = Code("vhostNotFound")
        /// An operation did not finish in its time limit; ``RabbitMQError/operation`` names it.
        public static let timeout = Code("timeout")
        /// The broker closed the channel (for example 404 NOT_FOUND, 406 PRECONDITION_FAILED, 403 ACCESS_REFUSED).
        public static let channelClosed = Code("channelClosed")
        /// The broker closed the connection (for example 320 CONNECTION_FORCED).
        public static let connectionClosed = Code("connectionClosed")
        /// The connection failed: a socket error, a missed heartbeat, a protocol error.
        public static let connectionLost = Code("connectionLost")
        /// The client was closed (or the channel, by the application) while the operation was pending or before it.
        public static let clientClosed = Code("clientClosed")
        /// An argument is invalid: a name too long, an out-of-range value, a type the broker refuses.
        public static let invalidArgument = Code("invalidArgument")
        /// The connection URL cannot be parsed.
        public static let invalidURL = Code("invalidURL")
        /// The broker rejected a published message (basic.nack), for example a full queue with `reject-publish`.
        public static let publishNacked = Code("publishNacked")
        /// A mandatory message matched no queue and came back (basic.return).
        public static let unroutable = Code("unroutable")
        /// A message is larger than the broker accepts.
        public static let messageTooLarge = Code("messageTooLarge")
        /// The broker cancelled a consumer, for example because its queue was deleted.
        public static let consumerCancelled = Code("consumerCancelled")
        /// A delivery was settled (acked, nacked or rejected) a second time: by two calls, by an earlier
        /// `multiple` settlement that covered it, or after automatic acknowledgement. A programming error, never
        /// retryable; the first settlement stands. (Settling a delivery whose channel has closed is not an error:
        /// the broker has already requeued it, so that settlement does nothing.)
        public static let alreadySettled = Code("alreadySettled")
        /// The TLS handshake or certificate verification failed.
        public static let tlsFailure = Code("tlsFailure")
        /// The broker or the library broke the protocol; the connection is closed.
        public static let protocolError = Code("protocolError")
        /// The responder of a ``RabbitMQClient/call(_:to:routingKey:properties:timeout:)`` failed to handle the
        /// request and answered with an error (its text is in the message). Not retryable by default.
        public static let responderFailed = Code("responderFailed")
        /// The connection was lost while a channel's transaction was open: the broker discarded what the
        /// transaction held (publishes and acks). Retryable: run the whole transaction again.
        public static let transactionLost = Code("transactionLost")
    }

    /// What kind of failure this is.
    public var code: Code
    /// A readable explanation, without secrets.
    public var message: String
    /// The operation that failed or timed out, such as `queue.declare` or `connect`.
    public var operation: String?
    /// The AMQP reply code from the broker, such as 404, when the broker sent one.
    public var replyCode: UInt16?
    /// The AMQP reply text from the broker, when it sent one.
    public var replyText: String?
    /// Whether trying again later can succeed.
    public var isRetryable: Bool
    /// For a collateral error, the failure of the other operation that closed the channel or connection this
    /// operation was using (with that operation's code and reply code); `nil` otherwise.
    public var cause: RabbitMQError? {
        get { causeBox?.error }
        set { causeBox = newValue.map(CauseBox.init) }
    }
    /// Whether the operation failed only because another operation's fault closed the channel or connection it
    /// shared (see ``cause``). Such an error is always retryable: the operation itself was fine.
    public var isCollateral: Bool { causeBox != nil }
    private var causeBox: CauseBox?
    /// Where the error was raised.
    public var file: String
    /// Where the error was raised.
    public var line: UInt

    /// Creates an error. `isRetryable` defaults to what ``Code`` and the reply code imply.
    public init(
        _ code: Code,
        _ message: String,
        operation: String? = nil,
        replyCode: UInt16? = nil,
        replyText: String? = nil,
        isRetryable: Bool? = nil,
        file: String = #fileID,
        line: UInt = #line
    ) {
        self.code = code
        self.message = message
        self.operation = operation
        self.replyCode = replyCode
        self.replyText = replyText
        self.isRetryable = isRetryable ?? Self.defaultRetryability(code: code, replyCode: replyCode)
        self.file = file
        self.line = line
    }

    public var description: String {
        var text = "RabbitMQError.\(code.name)"
        if let operation { text += " (\(operation))" }
        text += ": \(message)"
        if let replyCode {
            text += " [\(replyCode)\(replyText.map { " \($0)" } ?? "")]"
        }
        if let cause { text += "; caused by \(cause)" }
        return text
    }

    /// The error of an operation that failed only because `cause` closed the channel or connection it shared:
    /// `code`, retryable, no reply code.
    static func collateral(_ code: Code, _ message: String, cause: RabbitMQError) -> RabbitMQError {
        var error = RabbitMQError(code, message, isRetryable: true)
        error.cause = cause
        return error
    }

    public var debugDescription: String {
        "\(description) retryable=\(isRetryable) at \(file):\(line)"
    }

    private static func defaultRetryability(code: Code, replyCode: UInt16?) -> Bool {
        switch code {
        case .connectionRefused, .hostNotFound, .timeout, .connectionLost, .publishNacked, .transactionLost:
            return true
        case .connectionClosed:
            // 320 CONNECTION_FORCED (broker shutdown, operator) and 504/505 are transient; 403, 530 are not.
            return replyCode.map { [320, 504, 505, 506].contains($0) } ?? true
        case .channelClosed:
            // 405 RESOURCE_LOCKED (an exclusive queue in use) can clear; 403, 404, 406 will not.
            return replyCode == 405
        default:
            return false
        }
    }
}

/// Holds a collateral error's cause: a struct cannot hold a value of its own type directly.
private final class CauseBox: Sendable {
    let error: RabbitMQError

    init(_ error: RabbitMQError) {
        self.error = error
    }
}
