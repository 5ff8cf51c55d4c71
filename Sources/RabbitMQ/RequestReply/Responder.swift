import Foundation
import Logging
import ServiceLifecycle

/// Answers the requests of ``RabbitMQClient/call(_:to:routingKey:properties:timeout:)``: consumes a request queue,
/// runs a handler for each request, and publishes what it returns to the request's `reply_to` address with the
/// request's correlation id.
///
/// ```swift
/// let responder = Responder(client: client, configuration: .init(queue: "prices", concurrency: 4)) { request in
///     Responder.Reply(Data(try await price(of: request.bodyString).description.utf8))
/// }
/// try await responder.run()   // or add it to a ServiceGroup
/// ```
/// It is a ``QueueWorker`` underneath, with its concurrency, prefetch, graceful stop and self-healing; a request
/// is acked once its reply is published (with confirms). A handler that throws is answered with an empty body and
/// the error's description in the `x-responder-error` header, which makes the caller's `call` throw
/// ``RabbitMQError/Code/responderFailed``; the request is acked all the same, never retried. A request without
/// `reply_to` is acked and not answered.
public final class Responder: Service, Sendable {
    /// What a handler answers.
    public struct Reply: Sendable {
        /// The reply body.
        public var body: Data
        /// The reply's properties; the correlation id is set from the request. Default: none (transient).
        public var properties: MessageProperties

        /// Creates a reply.
        public init(_ body: Data, properties: MessageProperties = MessageProperties()) {
            self.body = body
            self.properties = properties
        }
    }

    /// Answers one request.
    public typealias Handler = @Sendable (Delivery) async throws -> Reply

    /// The worker consuming the request queue.
    public let worker: QueueWorker

    /// Creates a responder; it starts consuming `configuration.queue` when ``run()`` is called.
    /// `configuration.retry` and `configuration.classifier` matter only when publishing a reply fails (the request
    /// is then retried or requeued like a failed delivery of a ``QueueWorker``).
    public init(client: RabbitMQClient, configuration: QueueWorker.Configuration, handler: @escaping Handler) {
        let logger = client.logger
        worker = QueueWorker(client: client, configuration: configuration) { request in
            guard let replyTo = request.properties.replyTo else {
                logger.warning("a request without reply_to was not answered",
                               metadata: [LogMetadataKey.queue: "\(configuration.queue)"])
                return
            }
            var reply: Reply
            do {
                reply = try await handler(request)
            } catch {
                reply = Reply(Data(), properties: MessageProperties(
                    headers: [ReplyDispatcher.errorHeader: .string(String(describing: error))]))
            }
            reply.properties.correlationID = request.properties.correlationID
            if reply.properties.deliveryMode == nil { reply.properties.deliveryMode = .transient }
            try await client.publish(reply.body, to: "", routingKey: replyTo, properties: reply.properties)
        }
    }

    /// Answers requests until ``stop()``, a graceful shutdown or the task's cancellation; see
    /// ``QueueWorker/run()``.
    public func run() async throws {
        try await worker.run()
    }

    /// Stops taking requests; requests being answered finish (see ``QueueWorker/stop()``).
    public func stop() {
        worker.stop()
    }
}
