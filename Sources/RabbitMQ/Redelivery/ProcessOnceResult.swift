/// What a durable store's `processOnce(id:_:)` did: ran the body and recorded the id in the same database
/// transaction, or found the id recorded already and ran nothing.
public enum ProcessOnceResult<Value> {
    /// The body ran, and its writes and the record of the id committed together; the body's value.
    case processed(Value)
    /// The id was processed before (by this process or another one): the body did not run.
    case duplicate

    /// Whether the id had been processed before.
    public var isDuplicate: Bool {
        if case .duplicate = self { return true }
        return false
    }

    /// The body's value, or `nil` for a duplicate.
    public var value: Value? {
        if case .processed(let value) = self { return value }
        return nil
    }
}

extension ProcessOnceResult: Sendable where Value: Sendable {}
extension ProcessOnceResult: Equatable where Value: Equatable {}
