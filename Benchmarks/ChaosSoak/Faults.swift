import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A kind of fault the soak injects.
enum FaultKind: String, Codable, Sendable, CaseIterable {
    case stopStartApp = "stop_app, start_app"
    case killRestart = "kill -9, restart"
    case freeze = "SIGSTOP, SIGCONT"
    case clientNodeLoss = "kill -9 of the clients' node, restart"
    case closeConnection = "close_connection"

    /// How many of each one run injects (issue 16).
    var count: Int {
        switch self {
        case .stopStartApp, .killRestart: 10
        case .freeze, .clientNodeLoss, .closeConnection: 5
        }
    }
}

/// One fault of the schedule, with every random choice made from the seed up front.
struct PlannedFault: Sendable {
    var kind: FaultKind
    /// Quiet time before the fault.
    var pauseBefore: Duration
    /// How long the node stays down (stop_app, kill) before it is started again.
    var downtime: Duration
    /// The node, for faults on a random node.
    var node: Int
    /// Which of the soak's connections, for `close_connection` (modulo their number).
    var pick: Int
}

/// The seeded schedule: 10 stop_app/start_app, 10 kill -9 + restart, 5 freezes, 5 losses of the clients' node and
/// 5 forced connection closes, in a seeded order, one at a time.
enum FaultSchedule {
    static func make(seed: UInt64, nodes: Int) -> [PlannedFault] {
        var generator = SeededGenerator(seed: seed)
        var kinds = FaultKind.allCases.flatMap { Array(repeating: $0, count: $0.count) }
        kinds.shuffle(using: &generator)
        return kinds.map { kind in
            PlannedFault(kind: kind,
                         pauseBefore: .milliseconds(Int.random(in: 1000...3000, using: &generator)),
                         downtime: .milliseconds(Int.random(in: 1000...3000, using: &generator)),
                         node: Int.random(in: 0..<nodes, using: &generator),
                         pick: Int.random(in: 0..<1000, using: &generator))
        }
    }
}

/// What happened when one fault was injected.
struct FaultRecord: Codable, Sendable {
    var index: Int
    var kind: FaultKind
    var target: String
    /// Seconds from the start of the fault phase.
    var startedAt: Double
    /// Seconds the fault itself took (down and back up).
    var seconds: Double
    /// Seconds until every node saw the whole cluster running again afterwards.
    var healthSeconds: Double
    var error: String?
    var healthy: Bool
}

/// Injects faults into the cluster, one at a time, never more than one node down: each fault ends with the node
/// back, and the next starts only once every node sees all three running (a killed node has rejoined).
struct FaultInjector: Sendable {
    let cluster: Cluster
    /// The clients' heartbeat: a freeze lasts three of them.
    let heartbeat: Duration

    func inject(_ fault: PlannedFault, index: Int, phaseStart: ContinuousClock.Instant) async -> FaultRecord {
        let started = ContinuousClock.now
        var target = cluster.nodes[fault.node]
        var failure: String?
        do {
            switch fault.kind {
            case .stopStartApp:
                try await cluster.ctl(target, ["stop_app"], limit: 120)
                try await Task.sleep(for: fault.downtime)
                try await cluster.ctl(target, ["start_app"], limit: 180)
            case .killRestart:
                try await killAndRestart(target, downtime: fault.downtime)
            case .clientNodeLoss:
                target = await clientsNode() ?? target
                try await killAndRestart(target, downtime: fault.downtime)
            case .freeze:
                let pid = try await cluster.pid(target)
                kill(pid, SIGSTOP)
                try? await Task.sleep(for: heartbeat * 3)
                kill(pid, SIGCONT)
            case .closeConnection:
                let connections = try await soakConnections()
                guard !connections.isEmpty else { throw ClusterError(description: "no soak connection to close") }
                let connection = connections[fault.pick % connections.count]
                target = "\(connection.name) on \(connection.node)"
                try await cluster.ctl(connection.node, ["close_connection", connection.pid, "chaos soak"],
                                      attempts: 1, limit: 60)
            }
        } catch {
            failure = "\(error)"
        }
        let faultEnded = ContinuousClock.now
        let healthy = await cluster.waitUntilHealthy(timeout: .seconds(180))
        return FaultRecord(index: index, kind: fault.kind, target: target,
                           startedAt: (started - phaseStart).seconds, seconds: (faultEnded - started).seconds,
                           healthSeconds: (ContinuousClock.now - faultEnded).seconds, error: failure, healthy: healthy)
    }

    private func killAndRestart(_ node: String, downtime: Duration) async throws {
        try await cluster.broker("kill", node, limit: 60)
        try await Task.sleep(for: downtime)
        try await cluster.broker("restart", node, limit: 240)
    }

    private func soakConnections() async throws -> [Cluster.Connection] {
        var lastError: (any Error)?
        for node in cluster.nodes {
            do {
                return try await cluster.connections(prefix: SoakTopology.connectionPrefix, seenFrom: node)
            } catch {
                lastError = error
            }
        }
        throw lastError ?? ClusterError(description: "no node lists connections")
    }

    /// The node holding most of the soak's connections; waits up to 20 s for clients still recovering.
    private func clientsNode() async -> String? {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let connections = try? await soakConnections(), !connections.isEmpty {
                let byNode = Dictionary(grouping: connections, by: \.node)
                return byNode.max { $0.value.count < $1.value.count }?.key
            }
            try? await Task.sleep(for: .seconds(1))
        }
        return nil
    }
}
