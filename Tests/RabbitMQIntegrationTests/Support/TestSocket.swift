import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A TCP socket on 127.0.0.1 with a port chosen by the kernel. Listening, it completes TCP handshakes (the
/// kernel's backlog) but never accepts nor writes: a peer that never speaks. Not listening, it refuses
/// connections while holding the port.
final class TestSocket: Sendable {
    let descriptor: Int32
    let port: Int

    init(listening: Bool) throws {
        #if os(Linux)
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let descriptor = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard descriptor >= 0 else { throw SocketError(step: "socket", code: errno) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        guard bound == 0 else {
            Self.closeDescriptor(descriptor)
            throw SocketError(step: "bind", code: errno)
        }
        if listening {
            guard listen(descriptor, 16) == 0 else {
                Self.closeDescriptor(descriptor)
                throw SocketError(step: "listen", code: errno)
            }
        }
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard named == 0 else {
            Self.closeDescriptor(descriptor)
            throw SocketError(step: "getsockname", code: errno)
        }
        self.descriptor = descriptor
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() {
        Self.closeDescriptor(descriptor)
    }

    private static func closeDescriptor(_ descriptor: Int32) {
        #if canImport(Glibc)
        _ = Glibc.close(descriptor)
        #else
        _ = Darwin.close(descriptor)
        #endif
    }

    struct SocketError: Error {
        let step: String
        let code: Int32
    }
}
