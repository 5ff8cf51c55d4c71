/// Whether a failure is worth retrying.
public enum FailureDisposition: Sendable, Hashable {
    /// Transient (a downstream timeout, a lost connection): try the message again later.
    case retry
    /// Permanent (bad input): park the message at once; retrying cannot help.
    case park
}

/// Adopt this on errors that know whether retrying can help.
public protocol ClassifiedError: Error {
    /// Whether retrying can succeed.
    var isRetryable: Bool { get }
}

extension RabbitMQError: ClassifiedError {}

/// Decides the ``FailureDisposition`` of a handler's error.
///
/// A user-supplied classifier wins when it returns a value; otherwise an error adopting ``ClassifiedError``
/// (``RabbitMQError`` among them) decides by `isRetryable`; anything else is ``FailureDisposition/retry``
/// by ``defaultDisposition``'s default, since most unexpected errors are transient and the attempts are
/// bounded.
public struct FailureClassifier: Sendable {
    /// The application's own rule; `nil` defers to the error.
    public var classify: (@Sendable (any Error) -> FailureDisposition?)?
    /// What to do with an error nothing else classifies. Default ``FailureDisposition/retry``.
    public var defaultDisposition: FailureDisposition

    /// Creates a classifier.
    public init(defaultDisposition: FailureDisposition = .retry,
                _ classify: (@Sendable (any Error) -> FailureDisposition?)? = nil) {
        self.classify = classify
        self.defaultDisposition = defaultDisposition
    }

    /// The disposition of `error`.
    public func disposition(of error: any Error) -> FailureDisposition {
        if let decided = classify?(error) { return decided }
        if let classified = error as? any ClassifiedError { return classified.isRetryable ? .retry : .park }
        return defaultDisposition
    }
}

/// A ready-made permanent failure: throw it from a handler to park the message at once.
public struct NonRetryableError: ClassifiedError, CustomStringConvertible {
    /// Why the message cannot be processed.
    public var reason: String
    public var isRetryable: Bool { false }
    public var description: String { reason }

    /// Creates the error.
    public init(_ reason: String) { self.reason = reason }
}

/// A ready-made transient failure: throw it from a handler to retry the message later.
public struct RetryableError: ClassifiedError, CustomStringConvertible {
    /// What went wrong.
    public var reason: String
    public var isRetryable: Bool { true }
    public var description: String { reason }

    /// Creates the error.
    public init(_ reason: String) { self.reason = reason }
}
