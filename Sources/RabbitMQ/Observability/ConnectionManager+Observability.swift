import Logging

// PLACEHOLDER until ConnectionManager stores the client's Observability (see the report on issue 8):
// `ConnectionManager` should hold `let observability: Observability`, created in its `init` as
// `Observability(configuration.observability, logger: logger)`, and this file should then be deleted.
extension ConnectionManager {
    /// The observability of the client. For now: the process-wide defaults.
    var observability: Observability { Observability.processDefault }
}

extension Observability {
    /// The process-wide metrics factory and tracer, resolved on first use.
    static let processDefault = Observability(ObservabilityConfiguration(), logger: Logger(label: "rabbitmq"))
}
