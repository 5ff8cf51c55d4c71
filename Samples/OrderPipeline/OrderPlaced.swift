import Foundation

/// The event the order service publishes when a customer places an order (routing key `order.placed`).
///
/// It travels as JSON; `placedAt` is an ISO 8601 date with milliseconds, which the workers use to measure the
/// end-to-end latency from the order to its side effect.
struct OrderPlaced: Codable, Sendable, Hashable {
    /// One line of the order.
    struct Item: Codable, Sendable, Hashable {
        /// The product's stock-keeping unit.
        var sku: String
        /// How many.
        var quantity: Int
    }

    /// The business id: the key by which duplicates are recognised.
    var orderID: String
    /// Who ordered.
    var customerID: String
    /// The total, in the shop's currency. A negative amount makes the order invalid.
    var amount: Double
    /// What was ordered.
    var items: [Item]
    /// When the order was placed.
    var placedAt: Date

    /// Whether the order can be processed at all; the reason when it cannot.
    var validationError: String? {
        if amount < 0 { return "negative amount \(String(format: "%.2f", amount))" }
        if items.isEmpty { return "no items" }
        return nil
    }

    static let routingKey = "order.placed"

    /// The encoder the order service uses.
    static func makeEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Date.ISO8601FormatStyle(includingFractionalSeconds: true).format(date))
        }
        return encoder
    }

    /// The decoder the workers use.
    static func makeDecoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            if let date = try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text) { return date }
            if let date = try? Date.ISO8601FormatStyle().parse(text) { return date }
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "not an ISO 8601 date: \(text)"))
        }
        return decoder
    }

    /// Decodes an event from a message body.
    static func decode(_ body: Data) throws -> OrderPlaced {
        try makeDecoder().decode(OrderPlaced.self, from: body)
    }
}
