import ArgumentParser
import Foundation
import Logging
import RabbitMQ
#if canImport(Glibc)
import Glibc
#endif

/// How fast a connection attempt fails where there is nothing to talk to: the speed figures that the integration
/// tests used to assert and now leave to this benchmark (the tests check the error codes, with hang guards only).
///
/// - refused: a port of 127.0.0.1 bound by a socket that does not listen; `connect()` fails with
///   `connectionRefused`. The figure is the time to that error.
/// - silent: a listening socket that never accepts nor writes, and a handshake timeout of `--handshake-ms`; the
///   figure is how long after that timeout the `timeout` error comes (its overshoot).
///
/// Last line: `cf n=N refused_p50ms=… refused_maxms=… silent_timeoutms=… silent_overshoot_p50ms=…
/// silent_overshoot_maxms=…`.
struct ConnectFailures: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connect-failures",
        abstract: "Times connection attempts to a refusing port and to a peer that never speaks.")

    @Option(help: "Attempts of each kind.") var count = 20
    @Option(help: "Handshake timeout of the silent-peer attempts, in milliseconds.") var handshakeMs = 1000

    func run() async throws {
        var logger = Logger(label: "rabbitmq-bench")
        logger.logLevel = .critical
        let refusing = try BenchSocket(listening: false)
        defer { refusing.close() }
        let silent = try BenchSocket(listening: true)
        defer { silent.close() }
        let handshakeTimeout = Duration.milliseconds(handshakeMs)

        var refused: [Double] = []
        var overshoot: [Double] = []
        for _ in 0..<count {
            var configuration = try RabbitMQClient.Configuration(url: "amqp://guest:guest@127.0.0.1:\(refusing.port)/")
            configuration.connectTimeout = .seconds(60)
            refused.append(milliseconds(try await timeFailure(configuration, expecting: .connectionRefused, logger)))

            configuration = try RabbitMQClient.Configuration(url: "amqp://guest:guest@127.0.0.1:\(silent.port)/")
            configuration.handshakeTimeout = handshakeTimeout
            let elapsed = try await timeFailure(configuration, expecting: .timeout, logger)
            overshoot.append(milliseconds(elapsed - handshakeTimeout))
        }
        print(String(format: "cf n=%d refused_p50ms=%.1f refused_maxms=%.1f silent_timeoutms=%d "
                         + "silent_overshoot_p50ms=%.1f silent_overshoot_maxms=%.1f",
                     count, median(refused), refused.max() ?? 0, handshakeMs, median(overshoot), overshoot.max() ?? 0))
    }

    /// The time `connect()` takes to fail; throws if it succeeds or fails with another code.
    private func timeFailure(_ configuration: RabbitMQClient.Configuration, expecting code: RabbitMQError.Code,
                             _ logger: Logger) async throws -> Duration {
        let client = RabbitMQClient(configuration: configuration, logger: logger)
        let start = ContinuousClock.now
        do {
            try await client.connect()
        } catch let error as RabbitMQError where error.code == code {
            let elapsed = ContinuousClock.now - start
            await client.close()
            return elapsed
        } catch {
            await client.close()
            throw ValidationError("expected \(code), got \(error)")
        }
        await client.close()
        throw ValidationError("expected \(code), but the connection succeeded")
    }

    private func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }
}

/// A TCP socket on 127.0.0.1 with a port chosen by the kernel. Listening, it completes TCP handshakes (the
/// kernel's backlog) but never accepts nor writes. Not listening, it refuses connections while holding the port.
private struct BenchSocket {
    let descriptor: Int32
    let port: Int

    init(listening: Bool) throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw ValidationError("socket failed with errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        let listened = !listening || listen(descriptor, 64) == 0
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard bound == 0, listened, named == 0 else {
            _ = Glibc.close(descriptor)
            throw ValidationError("cannot set up a socket on 127.0.0.1 (errno \(errno))")
        }
        self.descriptor = descriptor
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(descriptor) }
}
