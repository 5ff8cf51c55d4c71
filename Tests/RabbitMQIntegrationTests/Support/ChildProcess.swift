import Foundation
import RabbitMQTestSupport

extension ChildProcess {
    /// `scripts/broker.sh`: `RABBITMQ_BROKER_SCRIPT`, else found relative to this source file.
    static var brokerScript: String {
        if let script = ProcessInfo.processInfo.environment["RABBITMQ_BROKER_SCRIPT"], !script.isEmpty {
            return script
        }
        // #filePath is <root>/Tests/RabbitMQIntegrationTests/Support/ChildProcess.swift.
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { root.deleteLastPathComponent() }
        return root.appendingPathComponent("scripts/broker.sh").path
    }

    /// Runs `scripts/broker.sh ARGS…` (with `environment`, else the test process's) and returns its output;
    /// throws if it fails.
    @discardableResult
    static func brokerScript(_ arguments: [String], environment: [String: String]? = nil) async throws -> String {
        let result = try await run(brokerScript, arguments, environment: environment)
        guard result.status == 0 else {
            throw DedicatedBrokerError(message: "broker.sh \(arguments.joined(separator: " ")) exited with "
                                        + "\(result.status):\n\(result.output)")
        }
        return result.output
    }
}
