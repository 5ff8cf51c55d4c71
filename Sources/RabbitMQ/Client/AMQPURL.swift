/// The parts of an `amqp://` or `amqps://` URL, percent-decoded. The authority may list several hosts, each with
/// an optional port, separated by commas: `amqp://user:pass@h1:5672,h2,[::1]:5674/vhost`.
struct AMQPURL: Equatable {
    var isTLS: Bool
    /// The hosts in the order the URL lists them (at least one).
    var endpoints: [RabbitMQClient.Configuration.Endpoint]
    var username: String
    var password: String
    var virtualHost: String
    var heartbeat: Duration?
    var connectTimeout: Duration?
    var frameMax: UInt32?
    var channelMax: UInt16?
    var connectionName: String?

    init(parsing url: String) throws(RabbitMQError) {
        func invalid(_ reason: String) -> RabbitMQError {
            // The URL itself may hold a password: say what is wrong, never echo it.
            RabbitMQError(.invalidURL, "invalid AMQP URL: \(reason)")
        }
        let schemeParts = url.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        guard schemeParts.count == 2 else { throw invalid("expected amqp:// or amqps://") }
        switch schemeParts[0].lowercased() {
        case "amqp": isTLS = false
        case "amqps": isTLS = true
        default: throw invalid("the scheme must be amqp or amqps")
        }
        var rest = schemeParts[1]
        // Checked before the query is split off, so a fragment after the query is refused too.
        if rest.contains("#") { throw invalid("fragments are not allowed") }
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var authority = rest
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        }
        username = "guest"
        password = "guest"
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                username = try Self.percentDecoded(userInfo[..<colon], part: "user name")
                password = try Self.percentDecoded(userInfo[userInfo.index(after: colon)...], part: "password")
            } else {
                username = try Self.percentDecoded(userInfo, part: "user name")
            }
        }
        let defaultPort = isTLS ? 5671 : 5672
        let hosts = authority.split(separator: ",", omittingEmptySubsequences: false)
        if hosts.count > 1, hosts.contains(where: \.isEmpty) { throw invalid("an empty entry in the host list") }
        endpoints = []
        for host in hosts {
            endpoints.append(try Self.endpoint(host, defaultPort: defaultPort, invalid: invalid))
        }
        if path.contains("/") { throw invalid("the virtual host must be one path segment; encode '/' as %2F") }
        virtualHost = path.isEmpty ? "/" : try Self.percentDecoded(path, part: "virtual host")

        for item in query.split(separator: "&") where !item.isEmpty {
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(pair[0])
            // Never echo an unknown key: the tail of a password with an unencoded '?' lands here.
            guard Self.queryKeys.contains(key) else { throw invalid(Self.unknownQueryKey) }
            let value = pair.count > 1 ? try Self.percentDecoded(pair[1], part: key) : ""
            switch key {
            case "heartbeat":
                // The protocol carries the heartbeat as a 16-bit number of seconds.
                guard let seconds = Self.integer(value, as: UInt16.self) else {
                    throw invalid("heartbeat must be whole seconds, 0 to 65535")
                }
                heartbeat = .seconds(seconds)
            case "connection_timeout":
                guard let milliseconds = Self.integer(value, as: UInt32.self) else {
                    throw invalid("connection_timeout must be milliseconds")
                }
                connectTimeout = .milliseconds(milliseconds)
            case "frame_max":
                guard let frames = Self.integer(value, as: UInt32.self), frames >= 4096 else {
                    throw invalid("frame_max must be at least 4096")
                }
                frameMax = frames
            case "channel_max":
                guard let channels = Self.integer(value, as: UInt16.self) else {
                    throw invalid("channel_max must be 0 to 65535")
                }
                channelMax = channels
            case "connection_name":
                connectionName = value
            default:
                throw invalid(Self.unknownQueryKey)
            }
        }
    }

    /// The query parameters the parser understands.
    private static let queryKeys = ["heartbeat", "connection_timeout", "frame_max", "channel_max", "connection_name"]
    private static let unknownQueryKey =
        "unknown query parameter; the supported ones are \(queryKeys.joined(separator: ", "))"

    /// `text` as a number when it is only ASCII digits (no sign, no spaces) and fits `T`.
    private static func integer<T: FixedWidthInteger>(_ text: some StringProtocol, as type: T.Type) -> T? {
        guard !text.isEmpty, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else {
            return nil
        }
        return T(text, radix: 10)
    }

    /// One `host[:port]` (or `[ipv6][:port]`) of the authority; an empty one means `localhost`.
    private static func endpoint(_ authority: Substring, defaultPort: Int, invalid: (String) -> RabbitMQError)
        throws(RabbitMQError) -> RabbitMQClient.Configuration.Endpoint
    {
        var hostPart = authority
        var port = defaultPort
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw invalid("unterminated IPv6 address") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let afterHost = authority[authority.index(after: close)...]
            if !afterHost.isEmpty {
                guard afterHost.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 address") }
                port = try Self.port(afterHost.dropFirst(), invalid: invalid)
            }
        } else if let colon = authority.lastIndex(of: ":") {
            hostPart = authority[..<colon]
            port = try Self.port(authority[authority.index(after: colon)...], invalid: invalid)
        }
        let host = try percentDecoded(hostPart, part: "host")
        return .init(host: host.isEmpty ? "localhost" : host, port: port)
    }

    private static func port(_ text: Substring, invalid: (String) -> RabbitMQError) throws(RabbitMQError) -> Int {
        guard let port = integer(text, as: Int.self), (1...65535).contains(port) else {
            throw invalid("the port must be 1 to 65535")
        }
        return port
    }

    private static func percentDecoded(_ text: Substring, part: String) throws(RabbitMQError) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw RabbitMQError(.invalidURL, "invalid AMQP URL: bad percent-escape in the \(part)")
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw RabbitMQError(.invalidURL, "invalid AMQP URL: the \(part) is not valid UTF-8")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
