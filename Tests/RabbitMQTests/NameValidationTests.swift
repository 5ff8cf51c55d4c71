import Testing

@testable import RabbitMQ

@Suite("Name validation")
struct NameValidationTests {
    @Test("A short string of 255 ASCII bytes passes, 256 fails with the byte count")
    func asciiLimit() throws {
        let longest = String(repeating: "a", count: 255)
        #expect(throws: Never.self) { try NameValidation.validate(longest, as: "queue name") }
        #expect(throws: Never.self) { try NameValidation.validate("", as: "queue name") }

        let error = try #require(throws: RabbitMQError.self) {
            try NameValidation.validate(longest + "a", as: "queue name", operation: "queue.declare")
        }
        #expect(error.code == .invalidArgument)
        #expect(error.operation == "queue.declare")
        #expect(error.message.hasPrefix("queue name \""))
        #expect(error.message.contains("is 256 bytes of UTF-8; at most 255 are allowed"))
        #expect(!error.isRetryable)
    }

    @Test("The limit counts UTF-8 bytes, not characters")
    func multibyteLimit() throws {
        // "é" is 2 bytes: 127 of them and one ASCII letter are exactly 255 bytes.
        let fits = String(repeating: "é", count: 127) + "a"
        #expect(fits.utf8.count == 255)
        #expect(throws: Never.self) { try NameValidation.validate(fits, as: "routing key") }

        // 128 characters, 256 bytes.
        let accents = String(repeating: "é", count: 128)
        #expect(accents.count == 128)
        let accentError = try #require(throws: RabbitMQError.self) { try NameValidation.validate(accents, as: "routing key") }
        #expect(accentError.code == .invalidArgument)
        #expect(accentError.message.contains("routing key"))
        #expect(accentError.message.contains("256 bytes"))

        // 64 rabbits of 4 bytes each: 64 characters, 256 bytes.
        let rabbits = String(repeating: "🐇", count: 64)
        let rabbitError = try #require(throws: RabbitMQError.self) { try NameValidation.validate(rabbits, as: "consumer tag") }
        #expect(rabbitError.message.contains("consumer tag"))
        #expect(rabbitError.message.contains("256 bytes"))
        // The quoted name is shortened to its first 40 characters.
        #expect(rabbitError.message.contains("\"\(String(repeating: "🐇", count: 40))…\""))
    }

    @Test("Entity names refuse carriage returns and line feeds, which the broker strips")
    func entityNameLineBreaks() throws {
        #expect(throws: Never.self) { try NameValidation.validateEntityName("orders.created", as: "queue name") }
        for name in ["orders\n", "a\rb", "x\r\ny"] {
            let error = try #require(throws: RabbitMQError.self) { try NameValidation.validateEntityName(name, as: "queue name") }
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("carriage return or line feed"))
        }
        // Too long is reported before line breaks.
        let long = String(repeating: "q", count: 300) + "\n"
        let error = try #require(throws: RabbitMQError.self) { try NameValidation.validateEntityName(long, as: "queue name") }
        #expect(error.message.contains("301 bytes"))
    }

    @Test("Table keys allow 128 bytes of UTF-8")
    func tableKeyLimit() throws {
        #expect(throws: Never.self) {
            try NameValidation.validateTableKey(String(repeating: "k", count: 128), in: "headers")
        }
        let key = String(repeating: "ü", count: 65)  // 130 bytes
        let error = try #require(throws: RabbitMQError.self) { try NameValidation.validateTableKey(key, in: "message headers") }
        #expect(error.code == .invalidArgument)
        #expect(error.message.contains("in message headers is 130 bytes of UTF-8; at most 128 are allowed"))
    }

    @Test("Tables are checked recursively, through nested tables and arrays, with the key's path")
    func nestedTables() throws {
        let longKey = String(repeating: "x", count: 129)
        let valid: FieldTable = ["a": 1, "nested": ["b": "c", "list": [1, ["d": true]]]]
        #expect(throws: Never.self) { try NameValidation.validate(valid, as: "headers") }

        var topLevel = FieldTable()
        topLevel[longKey] = 1
        let topError = try #require(throws: RabbitMQError.self) { try NameValidation.validate(topLevel, as: "headers") }
        #expect(topError.message.contains("in headers is 129 bytes"))

        var inner = FieldTable()
        inner[longKey] = .string("deep")
        let nested: FieldTable = ["outer": .table(inner)]
        let nestedError = try #require(throws: RabbitMQError.self) {
            try NameValidation.validate(nested, as: "headers", operation: "basic.publish")
        }
        #expect(nestedError.code == .invalidArgument)
        #expect(nestedError.operation == "basic.publish")
        #expect(nestedError.message.contains("in headers[\"outer\"] is 129 bytes"))

        let inArray: FieldTable = ["list": .array([.int64(1), .table(inner)])]
        let arrayError = try #require(throws: RabbitMQError.self) { try NameValidation.validate(inArray, as: "arguments") }
        #expect(arrayError.message.contains("in arguments[\"list\"][1] is 129 bytes"))

        let arrayInArray: FieldTable = ["m": .array([.array([.table(inner)])])]
        let deepError = try #require(throws: RabbitMQError.self) { try NameValidation.validate(arrayInArray, as: "arguments") }
        #expect(deepError.message.contains("in arguments[\"m\"][0][0] is 129 bytes"))
    }
}
