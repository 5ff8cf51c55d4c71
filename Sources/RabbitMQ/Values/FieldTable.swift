/// An AMQP field table: ordered keys with ``FieldValue``s.
///
/// Used for message headers, and for queue, exchange, binding and consumer arguments.
/// Keys keep their order; setting an existing key replaces its value in place.
public struct FieldTable: Sendable, Hashable, ExpressibleByDictionaryLiteral {
    /// One key and its value.
    public struct Entry: Sendable, Hashable {
        /// The key (at most 128 bytes of UTF-8, by the AMQP grammar's short string).
        public var key: String
        /// The value.
        public var value: FieldValue

        /// Creates an entry.
        public init(key: String, value: FieldValue) {
            self.key = key
            self.value = value
        }
    }

    /// The entries, in order.
    public private(set) var entries: [Entry]

    /// Creates an empty table.
    public init() { self.entries = [] }

    /// Creates a table from entries; a later duplicate key replaces an earlier one.
    public init(_ entries: some Sequence<Entry>) {
        self.entries = []
        for entry in entries { self[entry.key] = entry.value }
    }

    public init(dictionaryLiteral elements: (String, FieldValue)...) {
        self.init(elements.map { Entry(key: $0.0, value: $0.1) })
    }

    /// The value for `key`; assigning `nil` removes it.
    public subscript(key: String) -> FieldValue? {
        get { entries.first(where: { $0.key == key })?.value }
        set {
            if let index = entries.firstIndex(where: { $0.key == key }) {
                if let newValue { entries[index].value = newValue } else { entries.remove(at: index) }
            } else if let newValue {
                entries.append(Entry(key: key, value: newValue))
            }
        }
    }

    /// Whether the table has no entries.
    public var isEmpty: Bool { entries.isEmpty }

    /// The number of entries.
    public var count: Int { entries.count }

    /// The table with the entries of `other` set on top of this one's.
    public func merging(_ other: FieldTable) -> FieldTable {
        var merged = self
        for entry in other.entries { merged[entry.key] = entry.value }
        return merged
    }
}
