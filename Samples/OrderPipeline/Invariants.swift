import Foundation
import RabbitMQ
import RabbitMQSQLite

/// One property a finished run must have, checked against the database and the parking lots.
struct InvariantCheck: Sendable {
    /// What must hold.
    var name: String
    /// Whether it holds.
    var passed: Bool
    /// The numbers behind the verdict.
    var detail: String

    /// Every check: every event in the outbox published and confirmed; for each worker, every valid order has
    /// exactly one side effect and no other order has one; every invalid order is in the worker's parking lot with
    /// its reason, and nothing else is.
    static func all(client: RabbitMQClient, topology: PipelineTopology, store: SideEffectStore,
                    published: OrderService.Result?) async throws -> [InvariantCheck] {
        var checks: [InvariantCheck] = []
        let orders = try await store.publishedOrders()
        if let published {
            let expected = published.orders + published.resent
            let backlog = try await store.outbox.pendingCount()
            checks.append(InvariantCheck(
                name: "every order's event published from the outbox",
                passed: published.published == expected && published.confirmed == expected && backlog == 0,
                detail: "\(published.confirmed.grouped) of \(expected.grouped) events confirmed, "
                    + "\(backlog.grouped) left in the outbox"))
        }
        checks.append(InvariantCheck(
            name: "orders recorded", passed: !orders.valid.isEmpty || !orders.invalid.isEmpty,
            detail: "\(orders.valid.count.grouped) valid and \(orders.invalid.count.grouped) invalid orders in "
                + "the database"))
        for kind in WorkerKind.allCases {
            let audit = try await store.audit(kind)
            let effect = Self.effectName(kind)
            let passed = audit.rows == orders.valid.count && audit.missing == 0 && audit.duplicated == 0
                && audit.unexpected == 0
            var detail = "\(audit.rows.grouped) \(Self.effectPlural(kind)) for \(orders.valid.count.grouped) "
                + "valid orders"
            if !passed {
                detail += "; missing \(audit.missing), duplicated \(audit.duplicated), unexpected \(audit.unexpected)"
            }
            checks.append(InvariantCheck(name: "every valid order has exactly one \(effect)", passed: passed,
                                         detail: detail))
            checks.append(try await parkingLotCheck(kind, client: client, topology: topology,
                                                    invalid: orders.invalid))
        }
        return checks
    }

    /// The parking lot of `kind` holds every invalid order, with the reason, and nothing else.
    private static func parkingLotCheck(_ kind: WorkerKind, client: RabbitMQClient, topology: PipelineTopology,
                                        invalid: Set<String>) async throws -> InvariantCheck {
        let retry = topology.retry(kind)
        let parked = try await client.parkedMessages(in: retry, limit: max(1000, invalid.count * 4))
        var parkedIDs: Set<String> = []
        var withoutReason = 0
        var unexpected: [String] = []
        var example: String?
        for message in parked {
            guard let order = try? OrderPlaced.decode(message.delivery.body) else {
                unexpected.append("an undecodable message")
                continue
            }
            parkedIDs.insert(order.orderID)
            guard invalid.contains(order.orderID) else {
                unexpected.append("\(order.orderID) (\(message.reason ?? "no reason"))")
                continue
            }
            let expectedReason = "invalid order \(order.orderID): \(order.validationError ?? "?")"
            if message.reason?.contains(expectedReason) == true {
                example = example ?? message.reason
            } else {
                withoutReason += 1
            }
        }
        let missing = invalid.subtracting(parkedIDs)
        let passed = missing.isEmpty && unexpected.isEmpty && withoutReason == 0
        var detail = "\(parkedIDs.intersection(invalid).count.grouped) of \(invalid.count.grouped) invalid orders "
            + "in \(retry.parkingLotName) (\(parked.count.grouped) messages)"
        if !missing.isEmpty { detail += "; missing \(missing.count)" }
        if !unexpected.isEmpty { detail += "; unexpected: \(unexpected.prefix(3).joined(separator: ", "))" }
        if withoutReason > 0 { detail += "; \(withoutReason) without the expected reason" }
        if passed, let example { detail += "; reason: \"\(example)\"" }
        return InvariantCheck(name: "every invalid order parked by \(kind.rawValue) with its reason",
                              passed: passed, detail: detail)
    }

    static func effectPlural(_ kind: WorkerKind) -> String {
        switch kind {
        case .coupon: "coupons"
        case .notification: "notifications"
        case .recommendations: "cache entries"
        }
    }

    static func effectName(_ kind: WorkerKind) -> String {
        switch kind {
        case .coupon: "coupon"
        case .notification: "notification"
        case .recommendations: "cache entry"
        }
    }
}

extension Int {
    /// The number with thousands separators: `10,200`.
    var grouped: String {
        let digits = String(self.magnitude)
        var result = ""
        for (index, digit) in digits.enumerated() {
            if index > 0, (digits.count - index) % 3 == 0 { result.append(",") }
            result.append(digit)
        }
        return self < 0 ? "-" + result : result
    }
}
