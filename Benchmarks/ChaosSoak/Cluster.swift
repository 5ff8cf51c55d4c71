import Foundation

/// Runs a command under `timeout(1)`, so that no call to the broker's tools can hang the soak.
enum Shell {
    struct Result: Sendable {
        var status: Int32
        var output: String
    }

    /// Runs `arguments` (the first one is looked up on PATH), killed after `limit` seconds.
    static func run(_ arguments: [String], limit: Int = 60) async -> Result {
        let outputPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("chaos-\(UUID().uuidString).out").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let pid: pid_t
        do {
            pid = try Spawn.start(["timeout", "-k", "5", "\(limit)"] + arguments, outputPath: outputPath)
        } catch {
            return Result(status: -1, output: "\(error)")
        }
        let status = await Spawn.wait(pid)
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return Result(status: status, output: text)
    }
}

/// An error of the cluster's tools: a node that does not start, a command that keeps failing.
struct ClusterError: Error, CustomStringConvertible {
    var description: String
}

/// The soak's three nodes, driven through `scripts/broker.sh` and `rabbitmqctl`.
struct Cluster: Sendable {
    /// Node short names (`swiftrmq-x1`...), in the order of ``ports``.
    let nodes: [String]
    /// Each node's AMQP port.
    let ports: [Int]
    let brokerScript: String
    let rabbitmqctl: String

    func node(onPort port: Int) -> String? {
        ports.firstIndex(of: port).map { nodes[$0] }
    }

    /// `rabbitmqctl -n NODE@localhost arguments`, tried up to `attempts` times (a loaded machine makes the CLI
    /// fail with "distribution failed" now and then).
    @discardableResult
    func ctl(_ node: String, _ arguments: [String], attempts: Int = 3, limit: Int = 60) async throws -> String {
        var last = Shell.Result(status: 0, output: "")
        for attempt in 1...attempts {
            last = await Shell.run([rabbitmqctl, "-n", "\(node)@localhost"] + arguments, limit: limit)
            if last.status == 0 { return last.output }
            if attempt < attempts { try? await Task.sleep(for: .seconds(1)) }
        }
        throw ClusterError(description: "rabbitmqctl -n \(node) \(arguments.joined(separator: " ")) exited with "
                                        + "\(last.status): \(last.output.suffix(500))")
    }

    /// `scripts/broker.sh command node`.
    func broker(_ command: String, _ node: String, limit: Int = 180) async throws {
        let result = await Shell.run([brokerScript, command, node], limit: limit)
        guard result.status == 0 else {
            throw ClusterError(description: "broker.sh \(command) \(node) exited with \(result.status): "
                                            + "\(result.output.suffix(800))")
        }
    }

    /// The node's beam.smp pid.
    func pid(_ node: String) async throws -> Int32 {
        let result = await Shell.run([brokerScript, "pid", node], limit: 30)
        guard result.status == 0, let pid = Int32(result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        else { throw ClusterError(description: "no pid for \(node): \(result.output)") }
        return pid
    }

    /// How many running cluster nodes `node` sees, `nil` if it does not answer.
    func runningCount(seenFrom node: String) async -> Int? {
        guard let output = try? await ctl(node, ["eval", "length(rabbit_nodes:all_running())."], attempts: 1,
                                          limit: 30) else { return nil }
        return Int(output.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Waits until every node sees all three running, at most `timeout`. Returns whether they did.
    func waitUntilHealthy(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var healthy = true
            for node in nodes where await runningCount(seenFrom: node) != nodes.count {
                healthy = false
                break
            }
            if healthy { return true }
            try? await Task.sleep(for: .seconds(1))
        }
        return false
    }

    /// A client connection as the broker lists it.
    struct Connection: Sendable {
        var pid: String
        var node: String
        var name: String
    }

    /// The soak's connections (names starting with `prefix`), seen from `node`.
    func connections(prefix: String, seenFrom node: String) async throws -> [Connection] {
        let output = try await ctl(node, ["list_connections", "port", "pid", "client_properties",
                                          "--no-table-headers", "-q"], limit: 30)
        return output.split(separator: "\n").compactMap { line -> Connection? in
            let fields = line.split(separator: "\t", maxSplits: 2)
            guard fields.count == 3, let port = Int(fields[0]), let owner = self.node(onPort: port),
                  let range = fields[2].range(of: "\"\(prefix)[a-z-]*\"", options: .regularExpression)
            else { return nil }
            return Connection(pid: String(fields[1]), node: owner,
                              name: String(fields[2][range].dropFirst().dropLast()))
        }
    }

    /// Writes every node's Mnesia transaction log to its tables, so that a `kill -9` right after cannot lose
    /// the definitions declared just before (a known 3.10 caveat).
    func flushMnesia() async throws {
        for node in nodes { try await ctl(node, ["eval", "mnesia:dump_log()."]) }
    }

    /// Messages (ready and unacknowledged) in each of `queues`, seen from the first node that answers.
    func messageCounts(_ queues: [String]) async -> [String: Int]? {
        for node in nodes {
            guard let output = try? await ctl(node, ["list_queues", "name", "messages", "--no-table-headers", "-q"],
                                              attempts: 1, limit: 30) else { continue }
            var counts: [String: Int] = [:]
            for line in output.split(separator: "\n") {
                let fields = line.split(separator: "\t")
                if fields.count == 2, queues.contains(String(fields[0])), let count = Int(fields[1]) {
                    counts[String(fields[0])] = count
                }
            }
            return counts
        }
        return nil
    }
}
