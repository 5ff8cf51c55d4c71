import ArgumentParser

/// `rabbitmq-chaos`: the chaos soak of issue 16. `run` (the default) is the soak; `produce` and `consume` are the
/// processes it starts, so that each side's memory is measured on its own.
@main
struct ChaosSoak: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rabbitmq-chaos",
        abstract: "A chaos soak: no confirmed message may be lost while the cluster is restarted, killed and frozen.",
        subcommands: [Run.self, Produce.self, Consume.self],
        defaultSubcommand: Run.self)
}
