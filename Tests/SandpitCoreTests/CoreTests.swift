import Testing
@testable import SandpitCore

@Suite struct JSONCodecTests {
    @Test func roundTripsNestedValues() throws {
        let text = #"{"a":[1,-2.5,true,false,null,"x\n\u00e9\ud83d\ude00"],"b":{"c":"d"}}"#
        let v = try JSONCodec.parse(text)
        #expect(v["a"]?.arrayValue?.count == 6)
        #expect(v["a"]?.arrayValue?[5] == .string("x\né😀"))
        #expect(try JSONCodec.parse(JSONCodec.encode(v)) == v)
        #expect(JSONCodec.encode(v).hasPrefix(#"{"a":[1,-2.5,true"#))
    }

    @Test(arguments: [
        "{", "[1,]", "{\"a\":1,}", "01", "1.", "-", "tru", "\"\\x\"", "\"a", "{\"a\" 1}", "[1] x", "\"\\ud800\"", "\"\\udc00x\"",
    ])
    func rejectsMalformedInput(_ text: String) {
        #expect(throws: JSONCodec.ParseError.self) { try JSONCodec.parse(text) }
    }

    @Test func rejectsInvalidUTF8AndOverlongs() {
        #expect(throws: JSONCodec.ParseError.self) { try JSONCodec.parse([0x22, 0xFF, 0x22]) }
        #expect(throws: JSONCodec.ParseError.self) { try JSONCodec.parse([0x22, 0xC0, 0xAF, 0x22]) }       // overlong '/'
        #expect(throws: JSONCodec.ParseError.self) { try JSONCodec.parse([0x22, 0xED, 0xA0, 0x80, 0x22]) } // encoded surrogate
        #expect(throws: JSONCodec.ParseError.self) { try JSONCodec.parse([0x22, 0x01, 0x22]) }             // raw control char
    }

    @Test func limitsNestingDepth() throws {
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect(throws: JSONCodec.ParseError.self) { try JSONCodec.parse(deep) }
        let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        _ = try JSONCodec.parse(ok)
    }

    @Test func rejectsDuplicateKeys() {
        #expect(throws: JSONCodec.ParseError.self) { try JSONCodec.parse(#"{"a":1,"a":2}"#) }
    }

    @Test func escapesControlCharactersAndLineSeparators() {
        #expect(JSONCodec.encode(.string("a\u{1}\u{2028}\"\\")) == #""a\u0001\u2028\"\\""#)
    }

    @Test func keepsIntegersExact() throws {
        #expect(try JSONCodec.parse("9007199254740993") == .int(9_007_199_254_740_993))
        #expect(try JSONCodec.parse("1e3") == .double(1000))
    }
}

@Suite struct OutputBufferTests {
    @Test func keepsEverythingUnderBudget() {
        var b = OutputBuffer(budget: 100)
        b.append(.stdout, Array("hello".utf8))
        b.append(.stderr, Array("world".utf8))
        #expect(!b.truncated)
        #expect(b.chunks(since: 0).map(\.seq) == [0, 1])
        #expect(b.chunks(since: 0).map(\.stream) == [.stdout, .stderr])
    }

    @Test func keepsHeadAndTailAndCountsTheGap() {
        var b = OutputBuffer(budget: 20)
        for i in 0..<10 { b.append(.stdout, Array(String(repeating: Character(String(i)), count: 5).utf8)) }
        let all = b.chunks(since: 0).flatMap(\.bytes)
        #expect(b.truncated)
        #expect(b.droppedBytes == 30)
        #expect(String(decoding: all, as: UTF8.self) == "0000011111" + "8888899999")
        #expect(b.stdoutBytes == 50)
        // Sequence numbers stay monotonic so a client can see the gap.
        let seqs = b.chunks(since: 0).map(\.seq)
        #expect(seqs == seqs.sorted())
    }

    /// Spilled: bytes live at their offsets in the owner's log, memory keeps
    /// the newest `memoryBytes` (none once it leaves), reads come back
    /// through the owner, and the dropped middle is handed out as one range.
    @Test func spilledOutputIsReadBackFromTheLogAndTheDroppedMiddleIsNamed() {
        var b = OutputBuffer(budget: 20, memoryBytes: 6)
        var file = [UInt8](repeating: 0, count: 100)
        func write(_ pieces: [(chunk: OutputChunk, offset: Int64)]) {
            for p in pieces { for (i, x) in p.chunk.bytes.enumerated() { file[Int(p.offset) + i] = x } }
        }
        write(b.append(.stdout, Array("0000011111".utf8)))
        for (o, bytes) in b.chunksInMemory { write([(OutputChunk(seq: 0, stream: .stdout, bytes: bytes), o)]) }
        b.spill()
        #expect(b.inMemoryBytes <= 6)
        for i in 2..<10 { write(b.append(.stderr, Array(String(repeating: Character(String(i)), count: 5).utf8))) }
        var reads = 0
        let all = b.chunks(since: 0) { o, n in reads += 1; return Array(file[Int(o)..<Int(o) + n]) }.flatMap(\.bytes)
        #expect(String(decoding: all, as: UTF8.self) == "0000011111" + "8888899999")
        #expect(reads > 0 && b.inMemoryBytes <= 6)
        #expect(b.takeDropped().map { [$0.offset, $0.length] } == [10, 30])
        #expect(b.takeDropped() == nil)
        b.leaveMemory()
        #expect(b.inMemoryBytes == 0 && b.chunks(since: 0).isEmpty, "nothing left in memory; unreadable chunks are left out")
    }

    @Test func chunkUsesBase64OnlyForInvalidUTF8() {
        #expect(OutputChunk(seq: 0, stream: .stdout, bytes: Array("é".utf8)).wireFields().encoding == nil)
        let f = OutputChunk(seq: 0, stream: .stdout, bytes: [0x68, 0xFF]).wireFields()
        #expect(f.encoding == "base64")
        #expect(Base64.decode(f.data) == [0x68, 0xFF])
    }
}

@Suite struct MiscCoreTests {
    @Test func base64RoundTrips() {
        for n in 0..<20 {
            let bytes = (0..<n).map { UInt8(($0 * 37 + n) & 0xFF) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
        #expect(Base64.encode(Array("hi\n".utf8)) == "aGkK")
        #expect(Base64.decode("a$==") == nil)
    }

    @Test func timestampsAreRFC3339() {
        #expect(Timestamp.iso8601(ms: 0) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.iso8601(ms: 1_795_000_000_123) == "2026-11-18T11:06:40.123Z")
    }

    @Test func identifiersHaveAStrictShape() {
        let id = Identifier.make("sb")
        #expect(Identifier.isValid(id, prefix: "sb"))
        #expect(!Identifier.isValid("sb_../../etc", prefix: "sb"))
        #expect(!Identifier.isValid(id, prefix: "ex"))
        #expect(id != Identifier.make("sb"))
        #expect(id.count == 3 + 22, "at least 128 random bits: 22 base-62 characters")
        #expect(Identifier.isValid("sb_AAAAAAAAAAAA", prefix: "sb"), "ids of older catalogs stay valid")
        #expect(!Identifier.isValid("sb_AAAAAAAAAAAAA", prefix: "sb"))
    }

    @Test func policyRejectsUnknownFieldsNamingThem() {
        let v: JSONValue = ["name": "p", "memoryBytes": 1024, "memroyLimit": 5]
        #expect(throws: SandpitError.self) { try Policy.decode(v, source: "p.json") }
        do { _ = try Policy.decode(v, source: "p.json") } catch { #expect(error.message.contains("memroyLimit")) }
        let ok = try? Policy.decode(["name": "p", "pids": 64], source: "p.json")
        #expect(ok?.pids == 64)
    }

    @Test func errorCodesMapToJSONRPCNumbers() {
        #expect(SandpitError(.parseError, "").rpcCode == -32700)
        #expect(SandpitError(.methodNotFound, "").rpcCode == -32601)
        for c in SandpitError.Code.allCases where ![.parseError, .invalidRequest, .methodNotFound, .invalidParams, .internal, .requestTooLarge].contains(c) {
            #expect((-32099)...(-32000) ~= SandpitError(c, "").rpcCode, "\(c)")
        }
    }
}
