import Testing

@testable import RabbitMQ

@Suite("RabbitMQError")
struct RabbitMQErrorTests {
    // MARK: Description

    @Test("description with only a code and a message")
    func descriptionMinimal() {
        let error = RabbitMQError(.connectionRefused, "nothing listens on localhost:5672")
        #expect(error.description == "RabbitMQError.connectionRefused: nothing listens on localhost:5672")
        #expect(String(describing: error) == error.description)
        #expect("\(error)" == error.description)
    }

    @Test("description names the operation")
    func descriptionWithOperation() {
        let error = RabbitMQError(.timeout, "no reply within 20 seconds", operation: "queue.declare")
        #expect(error.description == "RabbitMQError.timeout (queue.declare): no reply within 20 seconds")
    }

    @Test("description adds the reply code and text")
    func descriptionWithReply() {
        let error = RabbitMQError(
            .channelClosed, "the broker closed the channel", operation: "queue.declare",
            replyCode: 404, replyText: "NOT_FOUND - no queue 'orders' in vhost '/'"
        )
        #expect(
            error.description == "RabbitMQError.channelClosed (queue.declare): the broker closed the channel "
                + "[404 NOT_FOUND - no queue 'orders' in vhost '/']"
        )
    }

    @Test("description with a reply code and no reply text")
    func descriptionWithReplyCodeOnly() {
        let error = RabbitMQError(.connectionClosed, "closed by the broker", replyCode: 320)
        #expect(error.description == "RabbitMQError.connectionClosed: closed by the broker [320]")
    }

    @Test("reply text without a reply code is not shown")
    func replyTextWithoutCode() {
        let error = RabbitMQError(.protocolError, "unexpected frame", replyText: "ignored")
        #expect(error.description == "RabbitMQError.protocolError: unexpected frame")
        #expect(error.replyText == "ignored")
    }

    @Test("debugDescription adds retryability and where the error was raised")
    func debugDescription() {
        let error = RabbitMQError(
            .channelClosed, "closed", operation: "basic.consume", replyCode: 405, replyText: "RESOURCE_LOCKED",
            file: "RabbitMQ/Engine/Connection.swift", line: 42
        )
        #expect(
            error.debugDescription == "RabbitMQError.channelClosed (basic.consume): closed [405 RESOURCE_LOCKED] "
                + "retryable=true at RabbitMQ/Engine/Connection.swift:42"
        )
        #expect(String(reflecting: error) == error.debugDescription)
    }

    @Test("file and line default to the caller's")
    func fileAndLineDefaultToCaller() {
        let line: UInt = #line + 1
        let error = RabbitMQError(.invalidArgument, "name too long")
        #expect(error.file == #fileID)
        #expect(error.line == line)
        #expect(error.debugDescription.hasSuffix("retryable=false at \(#fileID):\(line)"))
    }

    @Test("every field is kept")
    func fields() {
        let error = RabbitMQError(
            .publishNacked, "nacked", operation: "basic.publish", replyCode: 1, replyText: "t", isRetryable: false,
            file: "f", line: 7
        )
        #expect(error.code == .publishNacked)
        #expect(error.message == "nacked")
        #expect(error.operation == "basic.publish")
        #expect(error.replyCode == 1)
        #expect(error.replyText == "t")
        #expect(error.isRetryable == false)
        #expect(error.file == "f")
        #expect(error.line == 7)
    }

    // MARK: Codes

    static let allCodes: [RabbitMQError.Code] = [
        .connectionRefused, .hostNotFound, .authenticationFailed, .vhostNotFound, .timeout, .channelClosed,
        .connectionClosed, .connectionLost, .clientClosed, .invalidArgument, .invalidURL, .publishNacked,
        .unroutable, .messageTooLarge, .consumerCancelled, .tlsFailure, .protocolError,
    ]

    @Test("codes are distinct and describe themselves by name")
    func codes() {
        #expect(Set(Self.allCodes).count == Self.allCodes.count)
        #expect(RabbitMQError.Code.channelClosed.description == "channelClosed")
        #expect(RabbitMQError.Code.invalidURL.description == "invalidURL")
        for code in Self.allCodes {
            #expect(RabbitMQError(code, "m").description == "RabbitMQError.\(code): m")
        }
    }

    @Test("a code can be matched in a switch")
    func switchOnCode() {
        let error = RabbitMQError(.vhostNotFound, "no vhost")
        let matched: Bool = switch error.code {
        case .vhostNotFound: true
        default: false
        }
        #expect(matched)
    }

    // MARK: Retryability

    @Test("codes for transient failures are retryable by default", arguments: [
        RabbitMQError.Code.connectionRefused, .hostNotFound, .timeout, .connectionLost, .publishNacked,
    ])
    func retryableCodes(_ code: RabbitMQError.Code) {
        #expect(RabbitMQError(code, "m").isRetryable)
    }

    @Test("codes for lasting failures are not retryable by default", arguments: [
        RabbitMQError.Code.authenticationFailed, .vhostNotFound, .channelClosed, .clientClosed, .invalidArgument,
        .invalidURL, .unroutable, .messageTooLarge, .consumerCancelled, .tlsFailure, .protocolError,
    ])
    func nonRetryableCodes(_ code: RabbitMQError.Code) {
        #expect(!RabbitMQError(code, "m").isRetryable)
    }

    @Test("a closed connection without a reply code is retryable")
    func connectionClosedWithoutReplyCode() {
        #expect(RabbitMQError(.connectionClosed, "closed").isRetryable)
    }

    @Test("a closed channel is retryable only for 405 RESOURCE_LOCKED", arguments: [
        (UInt16(405), true),
        (403, false),
        (404, false),
        (406, false),
        (320, false),
        (541, false),
    ])
    func channelClosedRetryability(_ replyCode: UInt16, _ expected: Bool) {
        let error = RabbitMQError(.channelClosed, "closed", replyCode: replyCode)
        #expect(error.isRetryable == expected)
    }

    @Test("a closed connection is retryable for transient reply codes", arguments: [
        (UInt16(320), true),
        (504, true),
        (505, true),
        (506, true),
        (530, false),
        (403, false),
        (501, false),
        (502, false),
        (503, false),
        (540, false),
        (541, false),
    ])
    func connectionClosedRetryability(_ replyCode: UInt16, _ expected: Bool) {
        let error = RabbitMQError(.connectionClosed, "closed", replyCode: replyCode)
        #expect(error.isRetryable == expected)
    }

    @Test("a reply code does not change the default of other codes", arguments: [
        (RabbitMQError.Code.timeout, UInt16(404), true),
        (.connectionLost, 530, true),
        (.authenticationFailed, 320, false),
        (.invalidArgument, 405, false),
    ])
    func replyCodeIgnoredForOtherCodes(_ code: RabbitMQError.Code, _ replyCode: UInt16, _ expected: Bool) {
        #expect(RabbitMQError(code, "m", replyCode: replyCode).isRetryable == expected)
    }

    @Test("an explicit isRetryable overrides the default", arguments: [
        (RabbitMQError.Code.timeout, UInt16?.none, false),
        (.invalidArgument, nil, true),
        (.channelClosed, 405, false),
        (.channelClosed, 404, true),
        (.connectionClosed, 320, false),
        (.connectionClosed, 530, true),
    ])
    func explicitRetryability(_ code: RabbitMQError.Code, _ replyCode: UInt16?, _ isRetryable: Bool) {
        let error = RabbitMQError(code, "m", replyCode: replyCode, isRetryable: isRetryable)
        #expect(error.isRetryable == isRetryable)
        #expect(error.debugDescription.contains("retryable=\(isRetryable)"))
    }

    @Test("an error can be thrown and caught as any Error")
    func throwsAsError() {
        func fail() throws { throw RabbitMQError(.unroutable, "no route") }
        #expect {
            try fail()
        } throws: { error in
            (error as? RabbitMQError)?.code == .unroutable
        }
    }
}
