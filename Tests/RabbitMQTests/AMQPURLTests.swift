import Testing

@testable import RabbitMQ

/// A URL and what one parsed part of it should be.
struct URLCase<Value: Sendable>: Sendable, CustomTestStringConvertible {
    var url: String
    var expected: Value

    init(_ url: String, _ expected: Value) {
        self.url = url
        self.expected = expected
    }

    var testDescription: String { url }
}

@Suite("AMQP URL parsing")
struct AMQPURLTests {
    // MARK: Defaults

    @Test("a bare amqp URL takes every default")
    func defaults() throws {
        let url = try AMQPURL(parsing: "amqp://localhost")
        #expect(url.isTLS == false)
        #expect(url.endpoints[0].host == "localhost")
        #expect(url.endpoints[0].port == 5672)
        #expect(url.username == "guest")
        #expect(url.password == "guest")
        #expect(url.virtualHost == "/")
        #expect(url.heartbeat == nil)
        #expect(url.connectTimeout == nil)
        #expect(url.frameMax == nil)
        #expect(url.channelMax == nil)
        #expect(url.connectionName == nil)
    }

    @Test("amqps selects TLS and port 5671")
    func amqpsDefaults() throws {
        let url = try AMQPURL(parsing: "amqps://rabbit.example.com")
        #expect(url.isTLS)
        #expect(url.endpoints[0].host == "rabbit.example.com")
        #expect(url.endpoints[0].port == 5671)
        #expect(url.username == "guest")
        #expect(url.password == "guest")
        #expect(url.virtualHost == "/")
    }

    @Test("an explicit port wins over the scheme's default", arguments: [
        URLCase("amqp://h:5673", 5673),
        URLCase("amqps://h:5672", 5672),
        URLCase("amqp://h:1", 1),
        URLCase("amqp://h:65535", 65535),
        URLCase("amqp://h:05673", 5673),
    ])
    func explicitPort(_ test: URLCase<Int>) throws {
        #expect(try AMQPURL(parsing: test.url).endpoints[0].port == test.expected)
    }

    @Test("the scheme is case-insensitive", arguments: [
        URLCase("AMQP://h", false),
        URLCase("Amqp://h", false),
        URLCase("AMQPS://h", true),
        URLCase("amqpS://h", true),
    ])
    func schemeCase(_ test: URLCase<Bool>) throws {
        let url = try AMQPURL(parsing: test.url)
        #expect(url.isTLS == test.expected)
        #expect(url.endpoints[0].port == (test.expected ? 5671 : 5672))
    }

    @Test("an empty host means localhost", arguments: [
        URLCase("amqp://", "/"),
        URLCase("amqp:///", "/"),
        URLCase("amqp:///orders", "orders"),
        URLCase("amqp://:5673/", "/"),
        URLCase("amqp://alice:pw@/", "/"),
    ])
    func emptyHost(_ test: URLCase<String>) throws {
        let url = try AMQPURL(parsing: test.url)
        #expect(url.endpoints[0].host == "localhost")
        #expect(url.virtualHost == test.expected)
    }

    // MARK: Virtual host

    @Test("the path is the virtual host", arguments: [
        URLCase("amqp://h", "/"),
        URLCase("amqp://h/", "/"),
        URLCase("amqp://h:5672/", "/"),
        URLCase("amqp://h/%2F", "/"),
        URLCase("amqp://h/%2f", "/"),
        URLCase("amqp://h/orders", "orders"),
        URLCase("amqp://h/%2Forders", "/orders"),
        URLCase("amqp://h/team%2Forders", "team/orders"),
        URLCase("amqp://h/my%20vhost", "my vhost"),
        URLCase("amqp://h/caf%C3%A9", "café"),
        URLCase("amqp://h/café", "café"),
        URLCase("amqp://h/orders?heartbeat=5", "orders"),
        URLCase("amqp://h?heartbeat=5", "/"),
    ])
    func virtualHost(_ test: URLCase<String>) throws {
        #expect(try AMQPURL(parsing: test.url).virtualHost == test.expected)
    }

    // MARK: User and password

    struct Credentials: Sendable, Equatable {
        var username: String
        var password: String
        init(_ username: String, _ password: String) {
            self.username = username
            self.password = password
        }
    }

    @Test("user and password are read from the user info and percent-decoded", arguments: [
        URLCase("amqp://alice:s3cret@h", Credentials("alice", "s3cret")),
        URLCase("amqp://alice@h", Credentials("alice", "guest")),
        URLCase("amqp://:@h", Credentials("", "")),
        URLCase("amqp://alice:@h", Credentials("alice", "")),
        URLCase("amqp://:pw@h", Credentials("", "pw")),
        URLCase("amqp://us%40er:p%40ss@h", Credentials("us@er", "p@ss")),
        URLCase("amqp://a%3Ab:c%3Ad@h", Credentials("a:b", "c:d")),
        URLCase("amqp://a%2Fb:c%2Fd@h", Credentials("a/b", "c/d")),
        URLCase("amqp://u:p%40%3A%2F%3F%23%25@h", Credentials("u", "p@:/?#%")),
        URLCase("amqp://u:p%2bq+r@h", Credentials("u", "p+q+r")),
        URLCase("amqp://J%C3%BCrgen:%E2%9C%93@h", Credentials("Jürgen", "✓")),
        // Unencoded '@' in the password: the last '@' ends the user info.
        URLCase("amqp://u:p@ss@h", Credentials("u", "p@ss")),
        // Unencoded ':' in the password: the first ':' separates user from password.
        URLCase("amqp://u:a:b@h", Credentials("u", "a:b")),
    ])
    func credentials(_ test: URLCase<Credentials>) throws {
        let url = try AMQPURL(parsing: test.url)
        #expect(Credentials(url.username, url.password) == test.expected)
        #expect(url.endpoints[0].host == "h")
        #expect(url.endpoints[0].port == 5672)
    }

    @Test("user info does not disturb host, port and virtual host")
    func credentialsWithEverythingElse() throws {
        let url = try AMQPURL(parsing: "amqps://us%40er:p%40ss%3Aw%2Ford@rabbit.example.com:5673/%2Fprod")
        #expect(url.isTLS)
        #expect(url.username == "us@er")
        #expect(url.password == "p@ss:w/ord")
        #expect(url.endpoints[0].host == "rabbit.example.com")
        #expect(url.endpoints[0].port == 5673)
        #expect(url.virtualHost == "/prod")
    }

    // MARK: IPv6

    struct HostPort: Sendable, Equatable {
        var host: String
        var port: Int
        init(_ host: String, _ port: Int) {
            self.host = host
            self.port = port
        }
    }

    @Test("IPv6 addresses in brackets", arguments: [
        URLCase("amqp://[::1]:5673", HostPort("::1", 5673)),
        URLCase("amqp://[::1]:5673/", HostPort("::1", 5673)),
        URLCase("amqp://[::1]", HostPort("::1", 5672)),
        URLCase("amqps://[::1]/vh", HostPort("::1", 5671)),
        URLCase("amqp://u:p@[2001:db8::1]:15672/vh", HostPort("2001:db8::1", 15672)),
        URLCase("amqp://[fe80::1%25eth0]:5672", HostPort("fe80::1%eth0", 5672)),
    ])
    func ipv6(_ test: URLCase<HostPort>) throws {
        let url = try AMQPURL(parsing: test.url)
        #expect(HostPort(url.endpoints[0].host, url.endpoints[0].port) == test.expected)
    }

    @Test("an IPv4 address and port")
    func ipv4() throws {
        let url = try AMQPURL(parsing: "amqp://u:p@192.168.1.20:5673/vh")
        #expect(url.endpoints[0].host == "192.168.1.20")
        #expect(url.endpoints[0].port == 5673)
        #expect(url.virtualHost == "vh")
    }

    // MARK: Query parameters

    @Test("heartbeat is whole seconds", arguments: [
        URLCase("amqp://h?heartbeat=0", Duration.zero),
        URLCase("amqp://h/?heartbeat=10", Duration.seconds(10)),
        URLCase("amqp://h/?heartbeat=65535", Duration.seconds(65535)),
    ])
    func heartbeat(_ test: URLCase<Duration>) throws {
        #expect(try AMQPURL(parsing: test.url).heartbeat == test.expected)
    }

    @Test("connection_timeout is milliseconds", arguments: [
        URLCase("amqp://h/?connection_timeout=0", Duration.zero),
        URLCase("amqp://h/?connection_timeout=2500", Duration.milliseconds(2500)),
        URLCase("amqp://h/?connection_timeout=4294967295", Duration.milliseconds(4_294_967_295)),
    ])
    func connectionTimeout(_ test: URLCase<Duration>) throws {
        #expect(try AMQPURL(parsing: test.url).connectTimeout == test.expected)
    }

    @Test("frame_max is at least 4096", arguments: [
        URLCase("amqp://h/?frame_max=4096", UInt32(4096)),
        URLCase("amqp://h/?frame_max=131072", UInt32(131_072)),
        URLCase("amqp://h/?frame_max=4294967295", UInt32.max),
    ])
    func frameMax(_ test: URLCase<UInt32>) throws {
        #expect(try AMQPURL(parsing: test.url).frameMax == test.expected)
    }

    @Test("channel_max is 0 to 65535", arguments: [
        URLCase("amqp://h/?channel_max=0", UInt16(0)),
        URLCase("amqp://h/?channel_max=2047", UInt16(2047)),
        URLCase("amqp://h/?channel_max=65535", UInt16.max),
    ])
    func channelMax(_ test: URLCase<UInt16>) throws {
        #expect(try AMQPURL(parsing: test.url).channelMax == test.expected)
    }

    @Test("connection_name is percent-decoded", arguments: [
        URLCase("amqp://h/?connection_name=order-service", "order-service"),
        URLCase("amqp://h/?connection_name=order%20service", "order service"),
        URLCase("amqp://h/?connection_name=a%26b%3Dc", "a&b=c"),
        URLCase("amqp://h/?connection_name=a=b", "a=b"),
        URLCase("amqp://h/?connection_name=me@host", "me@host"),
        URLCase("amqp://h/?connection_name=", ""),
        URLCase("amqp://h/?connection_name", ""),
        URLCase("amqp://h/?connection_name=caf%C3%A9", "café"),
    ])
    func connectionName(_ test: URLCase<String>) throws {
        let url = try AMQPURL(parsing: test.url)
        #expect(url.connectionName == test.expected)
        #expect(url.endpoints[0].host == "h")
    }

    @Test("all query parameters together")
    func allQueryParameters() throws {
        let url = try AMQPURL(
            parsing: "amqps://app:pw@rabbit:5673/orders"
                + "?heartbeat=15&connection_timeout=2500&frame_max=65536&channel_max=100&connection_name=orders-api"
        )
        #expect(url.isTLS)
        #expect(url.username == "app")
        #expect(url.password == "pw")
        #expect(url.endpoints[0].host == "rabbit")
        #expect(url.endpoints[0].port == 5673)
        #expect(url.virtualHost == "orders")
        #expect(url.heartbeat == .seconds(15))
        #expect(url.connectTimeout == .milliseconds(2500))
        #expect(url.frameMax == 65536)
        #expect(url.channelMax == 100)
        #expect(url.connectionName == "orders-api")
    }

    @Test("empty query items are skipped; a repeated key keeps its last value")
    func queryItemEdgeCases() throws {
        let url = try AMQPURL(parsing: "amqp://h/?&heartbeat=5&&heartbeat=7&")
        #expect(url.heartbeat == .seconds(7))
        let empty = try AMQPURL(parsing: "amqp://h/?")
        #expect(empty.heartbeat == nil)
        #expect(empty.virtualHost == "/")
    }

    // MARK: Errors

    @Test("invalid URLs fail with invalidURL and say why", arguments: [
        // Scheme
        URLCase("http://localhost", "the scheme must be amqp or amqps"),
        URLCase("amqpx://localhost", "the scheme must be amqp or amqps"),
        URLCase("://localhost", "the scheme must be amqp or amqps"),
        URLCase("localhost:5672", "expected amqp:// or amqps://"),
        URLCase("amqp:/localhost", "expected amqp:// or amqps://"),
        URLCase("", "expected amqp:// or amqps://"),
        // Port
        URLCase("amqp://h:abc", "the port must be 1 to 65535"),
        URLCase("amqp://h:0", "the port must be 1 to 65535"),
        URLCase("amqp://h:65536", "the port must be 1 to 65535"),
        URLCase("amqp://h:-1", "the port must be 1 to 65535"),
        URLCase("amqp://h:+5672", "the port must be 1 to 65535"),
        URLCase("amqp://h: 5672", "the port must be 1 to 65535"),
        URLCase("amqp://h:", "the port must be 1 to 65535"),
        URLCase("amqp://h:99999999999999999999999", "the port must be 1 to 65535"),
        URLCase("amqp://[::1]:0", "the port must be 1 to 65535"),
        URLCase("amqp://[::1]:", "the port must be 1 to 65535"),
        // IPv6 brackets
        URLCase("amqp://[::1", "unterminated IPv6 address"),
        URLCase("amqp://[::1]5672", "unexpected text after the IPv6 address"),
        // Percent-escapes
        URLCase("amqp://h/%zz", "bad percent-escape in the virtual host"),
        URLCase("amqp://h/%2", "bad percent-escape in the virtual host"),
        URLCase("amqp://h/%", "bad percent-escape in the virtual host"),
        URLCase("amqp://h/%%41", "bad percent-escape in the virtual host"),
        URLCase("amqp://u%G0:p@h", "bad percent-escape in the user name"),
        URLCase("amqp://u:p%@h", "bad percent-escape in the password"),
        URLCase("amqp://u@h%2", "bad percent-escape in the host"),
        URLCase("amqp://h/?connection_name=%x1", "bad percent-escape in the connection_name"),
        // Invalid UTF-8 after decoding
        URLCase("amqp://h/%FF", "the virtual host is not valid UTF-8"),
        URLCase("amqp://h/%C3", "the virtual host is not valid UTF-8"),
        URLCase("amqp://h/%C3%28", "the virtual host is not valid UTF-8"),
        URLCase("amqp://%C0%AF@h", "the user name is not valid UTF-8"),
        URLCase("amqp://u:%ED%A0%80@h", "the password is not valid UTF-8"),
        URLCase("amqp://h/?connection_name=%FE", "the connection_name is not valid UTF-8"),
        // Path
        URLCase("amqp://h/a/b", "the virtual host must be one path segment"),
        URLCase("amqp://h//", "the virtual host must be one path segment"),
        URLCase("amqp://h/orders/", "the virtual host must be one path segment"),
        URLCase("amqp://h/#top", "fragments are not allowed"),
        URLCase("amqp://h#top", "fragments are not allowed"),
        URLCase("amqp://h/?heartbeat=5#top", "fragments are not allowed"),
        URLCase("amqp://h/?connection_name=a#b", "fragments are not allowed"),
        // Query parameters
        URLCase("amqp://h/?heartbeat=abc", "heartbeat must be whole seconds"),
        URLCase("amqp://h/?heartbeat=", "heartbeat must be whole seconds"),
        URLCase("amqp://h/?heartbeat", "heartbeat must be whole seconds"),
        URLCase("amqp://h/?heartbeat=-1", "heartbeat must be whole seconds"),
        URLCase("amqp://h/?heartbeat=+5", "heartbeat must be whole seconds"),
        URLCase("amqp://h/?heartbeat=1.5", "heartbeat must be whole seconds"),
        URLCase("amqp://h/?heartbeat=65536", "heartbeat must be whole seconds"),
        URLCase("amqp://h/?connection_timeout=1s", "connection_timeout must be milliseconds"),
        URLCase("amqp://h/?connection_timeout=-5", "connection_timeout must be milliseconds"),
        URLCase("amqp://h/?frame_max=4095", "frame_max must be at least 4096"),
        URLCase("amqp://h/?frame_max=0", "frame_max must be at least 4096"),
        URLCase("amqp://h/?frame_max=4294967296", "frame_max must be at least 4096"),
        URLCase("amqp://h/?channel_max=65536", "channel_max must be 0 to 65535"),
        URLCase("amqp://h/?channel_max=-1", "channel_max must be 0 to 65535"),
        URLCase("amqp://h/?vhost=x", "unknown query parameter"),
        URLCase("amqp://h/?Heartbeat=5", "unknown query parameter"),
        URLCase("amqp://h/?=5", "unknown query parameter"),
        URLCase("amqp://h/?heartbeat=5&cacertfile=/etc/ca.pem", "unknown query parameter"),
    ])
    func invalid(_ test: URLCase<String>) throws {
        let error = try #require(throws: RabbitMQError.self) { try AMQPURL(parsing: test.url) }
        #expect(error.code == .invalidURL)
        #expect(error.message.hasPrefix("invalid AMQP URL: "))
        #expect(error.message.contains(test.expected), "message was: \(error.message)")
        #expect(error.isRetryable == false)
        #expect(error.replyCode == nil)
    }

    @Test("an unknown query parameter's error names the supported ones")
    func unknownQueryParameterListsSupported() throws {
        let error = try #require(throws: RabbitMQError.self) { try AMQPURL(parsing: "amqp://h/?heartbeet=5") }
        for key in ["heartbeat", "connection_timeout", "frame_max", "channel_max", "connection_name"] {
            #expect(error.message.contains(key))
        }
    }

    @Test("an invalid URL's error never contains its password", arguments: [
        "amqp://user:hunter2@h:0/",
        "amqp://user:hunter2@h:notaport/",
        "amqp://user:hunter2@h/a/b",
        "amqp://user:hunter2@h/%zz",
        "amqp://user:hunter2@h/?nope=1",
        "amqp://user:hunter2@h/?heartbeat=x",
        "amqp://user:hunter2@h/#frag",
        "amqp://user:hunter2%zz@h/",
        "amqp://user:hunter2%FF@h/",
        "amqp://user:hunter2@[::1/",
        "amqp://user:hunter2@[::1]x/",
        "amqps://user:hunter2@h:65536/",
        "http://user:hunter2@h/",
        // A raw '?', '#' or '/' in the password cuts the URL early: the rest must still not be echoed.
        "amqp://user:?hunter2@h/",
        "amqp://user:pw?hunter2=1@h/",
        "amqp://user:pw?hunter2%zz@h/",
        "amqp://user:pw?hunter2=%FF@h/",
        "amqp://user:pw?heartbeat=hunter2@h/",
        "amqp://user:#hunter2@h/",
        "amqp://user:pw/hunter2@h/",
        "amqp://user:pw/hunter2/@h/",
        "amqp://user:pw/x/hunter2@h/",
        // When the part before the raw '?' is a valid host:port, the password's tail is parsed as the query.
        "amqp://user:2024?hunter2@h/",
        "amqp://user:2024?hunter2=1@h/",
        "amqp://user:2024?hunter2%zz@h/",
        "amqp://user:2024?x=1&hunter2@h/",
        "amqp://user:2024?connection_name=%zzhunter2@h/",
        "amqp://user:2024?connection_name=%FFhunter2@h/",
        "amqp://user:2024?heartbeat=hunter2@h/",
        "amqp://user:2024#hunter2@h/",
    ])
    func errorHidesPassword(_ url: String) throws {
        let error = try #require(throws: RabbitMQError.self) { try AMQPURL(parsing: url) }
        #expect(error.code == .invalidURL)
        #expect(!error.message.contains("hunter2"), "message was: \(error.message)")
        #expect(!error.description.contains("hunter2"), "description was: \(error.description)")
        #expect(!error.debugDescription.contains("hunter2"))
        #expect(!String(describing: error).contains("hunter2"))
    }
}

