import Foundation
import Testing

@testable import RabbitMQ

@Suite("Field tables")
struct FieldTableTests {
    private func keys(_ table: FieldTable) -> [String] { table.entries.map(\.key) }

    // MARK: Construction

    @Test("an empty table")
    func empty() {
        for table in [FieldTable(), [:], FieldTable([FieldTable.Entry]())] {
            #expect(table.isEmpty)
            #expect(table.count == 0)
            #expect(table.entries.isEmpty)
            #expect(table["anything"] == nil)
        }
    }

    @Test("a literal keeps its keys in the written order")
    func literalOrder() {
        let table: FieldTable = ["zeta": 1, "alpha": 2, "mu": 3, "beta": 4]
        #expect(keys(table) == ["zeta", "alpha", "mu", "beta"])
        #expect(table.count == 4)
        #expect(!table.isEmpty)
        #expect(table["zeta"] == .int64(1))
        #expect(table["beta"] == .int64(4))
        #expect(table["missing"] == nil)
    }

    @Test("a later duplicate key in the entries replaces the earlier value, at the earlier position")
    func duplicateEntries() {
        let table = FieldTable([
            FieldTable.Entry(key: "a", value: 1),
            FieldTable.Entry(key: "b", value: 2),
            FieldTable.Entry(key: "a", value: 3),
            FieldTable.Entry(key: "c", value: 4),
            FieldTable.Entry(key: "b", value: "two"),
        ])
        #expect(table.entries == [
            FieldTable.Entry(key: "a", value: .int64(3)),
            FieldTable.Entry(key: "b", value: .string("two")),
            FieldTable.Entry(key: "c", value: .int64(4)),
        ])
    }

    @Test("a later duplicate key in a literal replaces the earlier value")
    func duplicateLiteralKeys() {
        let pairs: [(String, FieldValue)] = [("x", 1), ("y", 2), ("x", 3)]
        let table = FieldTable(pairs.map { FieldTable.Entry(key: $0.0, value: $0.1) })
        #expect(table.entries == [FieldTable.Entry(key: "x", value: 3), FieldTable.Entry(key: "y", value: 2)])
        let nested: FieldValue = ["k": "first", "other": true, "k": "second"]
        #expect(nested == .table(FieldTable([
            FieldTable.Entry(key: "k", value: .string("second")),
            FieldTable.Entry(key: "other", value: .bool(true)),
        ])))
    }

    @Test("keys are case-sensitive")
    func caseSensitiveKeys() {
        var table: FieldTable = ["Key": 1]
        table["key"] = 2
        #expect(keys(table) == ["Key", "key"])
        #expect(table["Key"] == .int64(1))
        #expect(table["key"] == .int64(2))
    }

    // MARK: Mutation

    @Test("setting a new key appends it")
    func setNewKey() {
        var table: FieldTable = ["a": 1, "b": 2]
        table["c"] = "three"
        #expect(keys(table) == ["a", "b", "c"])
        #expect(table["c"] == .string("three"))
        #expect(table.count == 3)
    }

    @Test("setting an existing key replaces its value in place")
    func replaceInPlace() {
        var table: FieldTable = ["a": 1, "b": 2, "c": 3]
        table["b"] = .string("two")
        #expect(table.entries == [
            FieldTable.Entry(key: "a", value: .int64(1)),
            FieldTable.Entry(key: "b", value: .string("two")),
            FieldTable.Entry(key: "c", value: .int64(3)),
        ])
        table["a"] = .void
        #expect(keys(table) == ["a", "b", "c"])
        #expect(table["a"] == .void)
    }

    @Test("assigning nil removes the key and keeps the others' order")
    func removeWithNil() {
        var table: FieldTable = ["a": 1, "b": 2, "c": 3]
        table["b"] = nil
        #expect(keys(table) == ["a", "c"])
        #expect(table["b"] == nil)
        #expect(table.count == 2)
        table["missing"] = nil
        #expect(keys(table) == ["a", "c"])
        table["a"] = nil
        table["c"] = nil
        #expect(table.isEmpty)
        #expect(table == FieldTable())
    }

    @Test("a removed key set again goes to the end")
    func removeThenSet() {
        var table: FieldTable = ["a": 1, "b": 2, "c": 3]
        table["a"] = nil
        table["a"] = 10
        #expect(keys(table) == ["b", "c", "a"])
        #expect(table["a"] == .int64(10))
    }

    @Test("a table is a value: copies do not share changes")
    func valueSemantics() {
        let original: FieldTable = ["a": 1]
        var copy = original
        copy["a"] = 2
        copy["b"] = 3
        #expect(original.entries == [FieldTable.Entry(key: "a", value: 1)])
        #expect(copy.entries == [FieldTable.Entry(key: "a", value: 2), FieldTable.Entry(key: "b", value: 3)])
    }

    // MARK: Merging

    @Test("merging overrides shared keys in place and appends new ones in the other's order")
    func merging() {
        let base: FieldTable = ["x-max-length": 1000, "x-queue-type": "classic", "region": "eu"]
        let overrides: FieldTable = ["x-queue-type": "quorum", "x-delivery-limit": 5, "owner": "billing"]
        let merged = base.merging(overrides)
        #expect(merged.entries == [
            FieldTable.Entry(key: "x-max-length", value: .int64(1000)),
            FieldTable.Entry(key: "x-queue-type", value: .string("quorum")),
            FieldTable.Entry(key: "region", value: .string("eu")),
            FieldTable.Entry(key: "x-delivery-limit", value: .int64(5)),
            FieldTable.Entry(key: "owner", value: .string("billing")),
        ])
        // Neither input changes.
        #expect(keys(base) == ["x-max-length", "x-queue-type", "region"])
        #expect(base["x-queue-type"] == .string("classic"))
        #expect(keys(overrides) == ["x-queue-type", "x-delivery-limit", "owner"])
    }

    @Test("merging with an empty table")
    func mergingEmpty() {
        let table: FieldTable = ["a": 1, "b": 2]
        #expect(table.merging([:]) == table)
        #expect(FieldTable().merging(table) == table)
        #expect(FieldTable().merging(FieldTable()).isEmpty)
    }

    @Test("merging replaces nested tables whole, not key by key")
    func mergingIsShallow() {
        let base: FieldTable = ["nested": ["a": 1, "b": 2]]
        let merged = base.merging(["nested": ["c": 3]])
        #expect(merged["nested"] == ["c": 3])
    }

    // MARK: Literals

    @Test("each kind of literal makes its FieldValue case")
    func literals() {
        let string: FieldValue = "eu"
        let integer: FieldValue = 1000
        let negative: FieldValue = -42
        let largest: FieldValue = 9_223_372_036_854_775_807
        let boolean: FieldValue = true
        let falseValue: FieldValue = false
        let double: FieldValue = 0.25
        let array: FieldValue = [1, "two", false, 3.5]
        let emptyArray: FieldValue = []
        let table: FieldValue = ["k": "v", "n": 1]
        let emptyTable: FieldValue = [:]
        #expect(string == .string("eu"))
        #expect(integer == .int64(1000))
        #expect(negative == .int64(-42))
        #expect(largest == .int64(.max))
        #expect(boolean == .bool(true))
        #expect(falseValue == .bool(false))
        #expect(double == .double(0.25))
        #expect(array == .array([.int64(1), .string("two"), .bool(false), .double(3.5)]))
        #expect(emptyArray == .array([]))
        #expect(table == .table(FieldTable([
            FieldTable.Entry(key: "k", value: .string("v")),
            FieldTable.Entry(key: "n", value: .int64(1)),
        ])))
        #expect(emptyTable == .table(FieldTable()))
    }

    @Test("a table literal holds every kind of literal, nested")
    func tableLiteralOfEveryKind() {
        let table: FieldTable = [
            "x-max-length": 1000,
            "region": "eu",
            "lazy": true,
            "ratio": 0.5,
            "list": [1, "a", [true]],
            "nested": ["deeper": ["leaf": -1]],
        ]
        #expect(table.entries == [
            FieldTable.Entry(key: "x-max-length", value: .int64(1000)),
            FieldTable.Entry(key: "region", value: .string("eu")),
            FieldTable.Entry(key: "lazy", value: .bool(true)),
            FieldTable.Entry(key: "ratio", value: .double(0.5)),
            FieldTable.Entry(key: "list", value: .array([.int64(1), .string("a"), .array([.bool(true)])])),
            FieldTable.Entry(
                key: "nested",
                value: .table(FieldTable([
                    FieldTable.Entry(
                        key: "deeper",
                        value: .table(FieldTable([FieldTable.Entry(key: "leaf", value: .int64(-1))]))
                    ),
                ]))
            ),
        ])
        #expect(table["nested"]?.tableValue?["deeper"]?.tableValue?["leaf"]?.int64Value == -1)
        #expect(table["list"]?.arrayValue?.count == 3)
    }

    @Test("cases without a literal are built explicitly and stay distinct")
    func explicitCases() {
        let date = Date(timeIntervalSince1970: 1_700_000_000)
        let table: FieldTable = [
            "i8": .int8(-8), "u8": .uint8(8), "i16": .int16(-16), "u16": .uint16(16),
            "i32": .int32(-32), "u32": .uint32(32), "u64": .uint64(64), "f": .float(1.5),
            "dec": .decimal(FieldDecimal(scale: 2, value: 12345)), "raw": .bytes([0, 255]),
            "ts": .timestamp(date), "none": .void,
        ]
        #expect(table.count == 12)
        #expect(table["i8"] == .int8(-8))
        #expect(table["i8"] != .int64(-8))
        #expect(table["u64"] != .int64(64))
        #expect(table["f"] == .float(1.5))
        #expect(table["f"] != .double(1.5))
        #expect(table["dec"] == .decimal(FieldDecimal(scale: 2, value: 12345)))
        #expect(table["ts"] == .timestamp(date))
        #expect(table["none"] == .void)
        #expect(table["raw"] == .bytes([0, 255]))
    }

    @Test("a decimal keeps its scale and unscaled value")
    func decimal() {
        let decimal = FieldDecimal(scale: 3, value: 1500)
        #expect(decimal.scale == 3)
        #expect(decimal.value == 1500)
        #expect(decimal != FieldDecimal(scale: 2, value: 1500))
        #expect(decimal != FieldDecimal(scale: 3, value: 150))
    }

    // MARK: Accessors

    @Test("stringValue reads strings and UTF-8 bytes", arguments: [
        (FieldValue.string("eu-west"), "eu-west" as String?),
        (.string(""), ""),
        (.string("café ✓"), "café ✓"),
        (.bytes(Array("order-42".utf8)), "order-42"),
        (.bytes(Array("café".utf8)), "café"),
        (.bytes([]), ""),
    ])
    func stringValue(_ value: FieldValue, _ expected: String?) {
        #expect(value.stringValue == expected)
    }

    @Test("stringValue is nil for bytes that are not UTF-8 and for other cases", arguments: [
        FieldValue.bytes([0xFF]),
        .bytes([0xC3, 0x28]),
        .bytes([0xE2, 0x82]),
        .int64(1),
        .bool(true),
        .double(1),
        .array(["a"]),
        .table(["a": "b"]),
        .void,
        .timestamp(Date(timeIntervalSince1970: 0)),
    ])
    func stringValueNil(_ value: FieldValue) {
        #expect(value.stringValue == nil)
    }

    @Test("int64Value widens every integer width", arguments: [
        (FieldValue.int8(.min), Int64(Int8.min)),
        (.int8(.max), Int64(Int8.max)),
        (.int8(0), 0),
        (.uint8(.min), 0),
        (.uint8(.max), 255),
        (.int16(.min), -32768),
        (.int16(.max), 32767),
        (.uint16(.max), 65535),
        (.int32(.min), -2_147_483_648),
        (.int32(.max), 2_147_483_647),
        (.uint32(.max), 4_294_967_295),
        (.int64(.min), .min),
        (.int64(.max), .max),
        (.int64(-1), -1),
        (.uint64(0), 0),
        (.uint64(42), 42),
        (.uint64(UInt64(Int64.max)), .max),
    ])
    func int64Value(_ value: FieldValue, _ expected: Int64) {
        #expect(value.int64Value == expected)
    }

    @Test("int64Value is nil for a uint64 beyond Int64.max and for non-integers", arguments: [
        FieldValue.uint64(UInt64(Int64.max) + 1),
        .uint64(.max),
        .double(1),
        .float(1),
        .bool(true),
        .string("1"),
        .decimal(FieldDecimal(scale: 0, value: 1)),
        .bytes([1]),
        .array([1]),
        .table(["a": 1]),
        .timestamp(Date(timeIntervalSince1970: 1)),
        .void,
    ])
    func int64ValueNil(_ value: FieldValue) {
        #expect(value.int64Value == nil)
    }

    @Test("tableValue and arrayValue return the payload only for their case")
    func tableAndArrayValue() {
        let table: FieldTable = ["a": 1]
        #expect(FieldValue.table(table).tableValue == table)
        #expect(FieldValue.table(table).arrayValue == nil)
        #expect(FieldValue.array([1, "b"]).arrayValue == [.int64(1), .string("b")])
        #expect(FieldValue.array([1]).tableValue == nil)
        #expect(FieldValue.string("a").tableValue == nil)
        #expect(FieldValue.string("a").arrayValue == nil)
        #expect(FieldValue.array([]).arrayValue == [])
        #expect(FieldValue.table([:]).tableValue == FieldTable())
    }

    @Test("values and tables are hashable")
    func hashable() {
        let values: Set<FieldValue> = [1, 1, "1", true, .int32(1), .uint64(1)]
        #expect(values.count == 5)
        let tables: Set<FieldTable> = [["a": 1], ["a": 1], ["a": 2]]
        #expect(tables.count == 2)
    }
}
