internal import CRabbitMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the I/O thread needs to open and run a connection: the engine's own settings, plain values that can cross
/// to the thread (the layer above builds them from the client's configuration).
struct ConnectionParameters: Sendable {
    /// A broker's address.
    struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        var host: String
        var port: Int
        var description: String { "\(host):\(port)" }
    }

    /// How to set up TLS; the defaults verify the broker's certificate and host name.
    struct TLS: Sendable {
        var caCertificatePath: String?
        var certificatePath: String?
        var keyPath: String?
        var verifyPeer = true
        var verifyHostname = true
    }

    /// The SASL mechanism of the login.
    enum SASLMechanism: Sendable {
        /// The user name and password.
        case plain
        /// The TLS client certificate's identity; no password is sent.
        case external
    }

    /// Who logs in, and how: the layer above resolves it before each connection attempt.
    struct Login: Sendable {
        var username: String
        var password: String
        var mechanism: SASLMechanism
    }

    var endpoint: Endpoint
    var username: String
    var password: String
    var mechanism: SASLMechanism
    var virtualHost: String
    var tls: TLS?
    var connectTimeout: Duration
    var handshakeTimeout: Duration
    /// How long a request may wait for its reply.
    var requestTimeout: Duration
    var heartbeat: Duration
    var frameMax: UInt32
    var channelMax: UInt16
    /// The client properties sent at login, the capabilities the engine needs included.
    var clientProperties: FieldTable

    init(endpoint: Endpoint, login: Login, virtualHost: String, tls: TLS?,
         connectTimeout: Duration, handshakeTimeout: Duration, requestTimeout: Duration, heartbeat: Duration,
         frameMax: UInt32, channelMax: UInt16, connectionName: String?, clientProperties: FieldTable) {
        self.endpoint = endpoint
        self.username = login.username
        self.password = login.password
        self.mechanism = login.mechanism
        self.virtualHost = virtualHost
        self.tls = tls
        self.connectTimeout = connectTimeout
        self.handshakeTimeout = handshakeTimeout
        self.requestTimeout = requestTimeout
        self.heartbeat = heartbeat
        self.frameMax = frameMax
        self.channelMax = channelMax
        var properties: FieldTable = [
            "product": "swift-rabbitmq",
            "version": "0.1.0",
            "platform": "Swift",
            "information": "https://github.com/swift-rabbitmq",
            // librabbitmq 0.11 advertises only two capabilities; without these the broker stays silent
            // about consumer cancellation and resource alarms.
            "capabilities": [
                "publisher_confirms": true,
                "exchange_exchange_bindings": true,
                "basic.nack": true,
                "consumer_cancel_notify": true,
                "connection.blocked": true,
                "authentication_failure_close": true,
                "per_consumer_qos": true,
            ],
        ]
        if let connectionName { properties["connection_name"] = .string(connectionName) }
        self.clientProperties = properties.merging(clientProperties)
    }
}

/// What the broker and the client agreed on at login.
struct NegotiatedParameters: Sendable {
    var endpoint: ConnectionParameters.Endpoint
    var heartbeatSeconds: Int
    var frameMax: Int
    var channelMax: Int
    var serverProperties: FieldTable
    /// Whether the connection runs over TLS (then only librabbitmq can write to it).
    var usesTLS: Bool
}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: .init(seconds), tv_usec: .init(attoseconds / 1_000_000_000_000))
    }
}

/// Opens the socket and logs in, on the I/O thread. On failure the connection state is destroyed.
func openConnection(_ parameters: ConnectionParameters, arena: CArena) throws(RabbitMQError)
    -> (amqp_connection_state_t, NegotiatedParameters)
{
    guard let state = amqp_new_connection() else {
        throw RabbitMQError(.connectionLost, "librabbitmq could not allocate a connection")
    }
    do {
        let negotiated = try login(state, parameters, arena: arena)
        return (state, negotiated)
    } catch {
        amqp_destroy_connection(state)
        throw error
    }
}

private func login(_ state: amqp_connection_state_t, _ parameters: ConnectionParameters, arena: CArena)
    throws(RabbitMQError) -> NegotiatedParameters
{
    defer { arena.reset() }
    let endpoint = parameters.endpoint
    let socket: OpaquePointer?
    if let tls = parameters.tls {
        socket = amqp_ssl_socket_new(state)
        if let socket { try configureTLS(socket, tls) }
    } else {
        socket = amqp_tcp_socket_new(state)
    }
    guard let socket else { throw RabbitMQError(.connectionLost, "librabbitmq could not create a socket") }

    var connectTimeout = timeval(parameters.connectTimeout)
    let openStatus = amqp_socket_open_noblock(socket, endpoint.host, Int32(endpoint.port), &connectTimeout)
    guard openStatus == AMQP_STATUS_OK.rawValue else {
        throw socketOpenError(openStatus, parameters)
    }

    var handshakeTimeout = timeval(parameters.handshakeTimeout)
    amqp_set_handshake_timeout(state, &handshakeTimeout)
    var properties = arena.table(parameters.clientProperties)
    let heartbeat = Int32(clamping: parameters.heartbeat.components.seconds)
    let channelMax = Int32(parameters.channelMax)
    let frameMax = Int32(clamping: Int64(parameters.frameMax))
    let reply: amqp_rpc_reply_t
    switch parameters.mechanism {
    case .plain:
        reply = swift_amqp_login_plain(state, parameters.virtualHost, channelMax, frameMax,
                                       min(heartbeat, Int32(UInt16.max)), &properties, parameters.username,
                                       parameters.password)
    case .external:
        // RabbitMQ's EXTERNAL mechanism takes the identity from the certificate and ignores the response; librabbitmq
        // 0.11 fails an empty one with AMQP_STATUS_NO_MEMORY (a zero-byte pool allocation), so it is never empty.
        let identity = parameters.username.isEmpty ? "certificate" : parameters.username
        reply = swift_amqp_login_external(state, parameters.virtualHost, channelMax, frameMax,
                                          min(heartbeat, Int32(UInt16.max)), &properties, identity)
    }
    try checkLoginReply(reply, parameters)
    return NegotiatedParameters(
        endpoint: endpoint,
        heartbeatSeconds: Int(amqp_get_heartbeat(state)),
        frameMax: Int(amqp_get_frame_max(state)),
        channelMax: Int(amqp_get_channel_max(state)),
        serverProperties: amqp_get_server_properties(state).map { FieldTable($0.pointee) } ?? [:],
        usesTLS: parameters.tls != nil)
}

private func configureTLS(_ socket: OpaquePointer, _ tls: ConnectionParameters.TLS) throws(RabbitMQError) {
    amqp_ssl_socket_set_verify_peer(socket, tls.verifyPeer ? 1 : 0)
    amqp_ssl_socket_set_verify_hostname(socket, tls.verifyHostname ? 1 : 0)
    if let ca = tls.caCertificatePath, amqp_ssl_socket_set_cacert(socket, ca) != AMQP_STATUS_OK.rawValue {
        throw RabbitMQError(.tlsFailure, "cannot read the CA certificate file \(ca) (missing, unreadable or not PEM)",
                            operation: "connect")
    }
    if let certificate = tls.certificatePath {
        guard let key = tls.keyPath else {
            throw RabbitMQError(.invalidArgument, "a TLS client certificate needs its key (keyPath)")
        }
        if amqp_ssl_socket_set_key(socket, certificate, key) != AMQP_STATUS_OK.rawValue {
            throw RabbitMQError(.tlsFailure, "cannot read the client certificate \(certificate) or its key \(key), "
                                    + "or the key does not match the certificate", operation: "connect")
        }
    }
}

private func socketOpenError(_ status: Int32, _ parameters: ConnectionParameters) -> RabbitMQError {
    let endpoint = parameters.endpoint
    let detail = String(cString: amqp_error_string2(status))
    switch status {
    case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED.rawValue:
        return RabbitMQError(.hostNotFound, "cannot resolve the host name \(endpoint.host)", operation: "connect")
    case AMQP_STATUS_TIMEOUT.rawValue:
        return RabbitMQError(.timeout, "connecting to \(endpoint) timed out", operation: "connect")
    case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
        return RabbitMQError(.tlsFailure, "the broker's certificate does not name the host \(endpoint.host) "
                                 + "(librabbitmq checks DNS names only, not IP addresses: connect with a host name "
                                 + "the certificate lists)", operation: "connect")
    case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue:
        guard let ca = parameters.tls?.caCertificatePath else {
            return RabbitMQError(.tlsFailure, "the broker's certificate at \(endpoint) cannot be verified: no CA "
                                     + "certificate file is configured (Configuration.TLS.caCertificatePath; "
                                     + "librabbitmq 0.11 reads no system store)", operation: "connect")
        }
        return RabbitMQError(.tlsFailure, "the broker's certificate at \(endpoint) is not trusted by the certificate "
                                 + "authorities in \(ca)", operation: "connect")
    case AMQP_STATUS_SSL_ERROR.rawValue, AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue:
        return RabbitMQError(.tlsFailure, "the TLS handshake with \(endpoint) failed (\(detail)): check that this port "
                                 + "serves TLS, not plain AMQP, and that the broker accepts the client's certificate",
                             operation: "connect")
    default:
        // A TLS socket reports a failed TCP connect as AMQP_STATUS_SOCKET_ERROR too (TLS failures have codes of
        // their own), and errno is EINPROGRESS by then rather than ECONNREFUSED.
        if errno == ECONNREFUSED || status == AMQP_STATUS_SOCKET_ERROR.rawValue {
            return RabbitMQError(.connectionRefused, "nothing accepts connections at \(endpoint)", operation: "connect")
        }
        return RabbitMQError(.connectionLost, "cannot connect to \(endpoint): \(detail)", operation: "connect")
    }
}

private func checkLoginReply(_ reply: amqp_rpc_reply_t, _ parameters: ConnectionParameters) throws(RabbitMQError) {
    switch reply.reply_type {
    case AMQP_RESPONSE_NORMAL:
        return
    case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD:
        let close = reply.reply.decoded!.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
        let code = close.reply_code
        let text = close.reply_text.string
        switch code {
        case 403 where parameters.mechanism == .external:
            throw RabbitMQError(.authenticationFailed, "the broker refused the login with the client certificate "
                                    + "(SASL EXTERNAL): no user is named after the certificate, or the broker does "
                                    + "not offer EXTERNAL", operation: "login", replyCode: code, replyText: text)
        case 403:
            throw RabbitMQError(.authenticationFailed, "the broker refused user '\(parameters.username)' or its password",
                                operation: "login", replyCode: code, replyText: text)
        case 530:
            throw RabbitMQError(.vhostNotFound,
                                "virtual host '\(parameters.virtualHost)' does not exist or user "
                                    + "'\(parameters.username)' may not use it",
                                operation: "login", replyCode: code, replyText: text)
        default:
            throw RabbitMQError(.connectionClosed, "the broker closed the connection during login",
                                operation: "login", replyCode: code, replyText: text)
        }
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        let status = reply.library_error
        if status == AMQP_STATUS_TIMEOUT.rawValue {
            throw RabbitMQError(.timeout, "the broker at \(parameters.endpoint) did not complete the AMQP handshake "
                                    + "within \(parameters.handshakeTimeout)", operation: "handshake")
        }
        let detail = String(cString: amqp_error_string2(status))
        if status == AMQP_STATUS_SSL_ERROR.rawValue {
            // With TLS 1.3 the broker checks the client certificate after the client's side of the handshake
            // is done, so a refused certificate shows up here.
            throw RabbitMQError(.tlsFailure, "the TLS session with \(parameters.endpoint) failed during the AMQP "
                                    + "handshake: the broker may have refused the client certificate",
                                operation: "handshake")
        }
        if parameters.tls == nil, [AMQP_STATUS_SOCKET_ERROR.rawValue, AMQP_STATUS_CONNECTION_CLOSED.rawValue,
                                   AMQP_STATUS_BAD_AMQP_DATA.rawValue].contains(status) {
            // A TLS listener answers the AMQP protocol header with a TLS alert and resets the connection.
            throw RabbitMQError(.connectionLost, "\(parameters.endpoint) ended the connection during the AMQP "
                                    + "handshake (\(detail)); if this port expects TLS, use an amqps:// URL or set "
                                    + "the configuration's tls", operation: "handshake")
        }
        throw RabbitMQError(.connectionLost, "the connection failed during the AMQP handshake: \(detail)",
                            operation: "handshake")
    default:
        throw RabbitMQError(.protocolError, "unexpected reply during the AMQP handshake", operation: "handshake")
    }
}
