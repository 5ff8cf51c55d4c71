import Logging
import MetricsTestKit
@testable import RabbitMQ

extension ChannelLink {
    /// A link on channel 1 whose commands go to `commands`, a queue no I/O thread serves: what a test submits
    /// stays there for it to inspect. Stale settlements are counted in `metrics` when given.
    static func unserved(commands: EngineCommandQueue, windowCapacity: Int = 1, metrics: TestMetrics? = nil) -> ChannelLink {
        let observability = Observability(RabbitMQClient.Configuration.Observability(metricsFactory: metrics),
                                          logger: Logger(label: "test"))
        return ChannelLink(number: 1, commands: commands, windowCapacity: windowCapacity,
                           staleSettlements: observability)
    }
}
