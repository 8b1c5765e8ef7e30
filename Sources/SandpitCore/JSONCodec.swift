/// A strict RFC 8259 JSON parser and a compact serializer.
/// Strict on purpose: invalid UTF-8, lone surrogates, trailing bytes and
/// excessive nesting are errors, never silently repaired.
public enum JSONCodec {
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var message: String
        public var offset: Int
        public var description: String { "\(message) at byte \(offset)" }
    }

    public static let defaultMaxDepth = 64

    public static func parse<C: Collection<UInt8>>(_ bytes: C, maxDepth: Int = defaultMaxDepth) throws(ParseError) -> JSONValue
    where C.Index == Int {
        var p = Parser(bytes: Array(bytes), maxDepth: maxDepth)
        return try p.parseDocument()
    }

    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws(ParseError) -> JSONValue {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }

    public static func encode(_ value: JSONValue) -> String {
        var out = ""
        out.reserveCapacity(64)
        write(value, into: &out)
        return out
    }

    public static func write(_ value: JSONValue, into out: inout String) {
        switch value {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .bigInteger(let digits): out += digits
        case .double(let d):
            if d.isFinite {
                if d.rounded() == d && abs(d) < 1e15 { out += String(Int64(d)) } else { out += "\(d)" }
            } else {
                out += "null"
            }
        case .string(let s): writeString(s, into: &out)
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += "," }
                write(v, into: &out)
            }
            out += "]"
        case .object(let o):
            out += "{"
            var first = true
            for (k, v) in o {
                if !first { out += "," }
                first = false
                writeString(k, into: &out)
                out += ":"
                write(v, into: &out)
            }
            out += "}"
        }
    }

    /// Escapes `"`, `\\`, control characters and U+2028/U+2029 (line breaks
    /// to JavaScript); everything else is copied in runs, so big strings
    /// (base64 file chunks) cost one pass and a few bulk appends.
    static func writeString(_ s: String, into out: inout String) {
        out += "\""
        var s = s
        s.withUTF8 { u in
            var start = 0, i = 0
            func flush(_ end: Int) {
                if end > start { out += String(decoding: UnsafeBufferPointer(rebasing: u[start..<end]), as: UTF8.self) }
            }
            let n = u.count
            while i < n {
                let c = u[i]
                // Most bytes need nothing (a base64 chunk: none do): skip them without building anything.
                if c >= 0x20, c != 0x22, c != 0x5C, c != 0xE2 { i += 1; continue }
                var escape: String?
                if c == 0x22 { escape = "\\\"" }
                else if c == 0x5C { escape = "\\\\" }
                else if c < 0x20 {
                    switch c {
                    case 0x0A: escape = "\\n"
                    case 0x0D: escape = "\\r"
                    case 0x09: escape = "\\t"
                    default:
                        let hex = String(c, radix: 16)
                        escape = "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                    }
                } else if c == 0xE2, i + 2 < u.count, u[i + 1] == 0x80, u[i + 2] == 0xA8 || u[i + 2] == 0xA9 {
                    flush(i)
                    out += u[i + 2] == 0xA8 ? "\\u2028" : "\\u2029"
                    i += 3
                    start = i
                    continue
                }
                if let e = escape {
                    flush(i)
                    out += e
                    start = i + 1
                }
                i += 1
            }
            flush(u.count)
        }
        out += "\""
    }

    struct Parser {
        let bytes: [UInt8]
        let maxDepth: Int
        var i = 0
        var depth = 0

        init(bytes: [UInt8], maxDepth: Int) {
            self.bytes = bytes
            self.maxDepth = maxDepth
        }

        func fail(_ m: String) -> ParseError { ParseError(message: m, offset: i) }

        mutating func skipWS() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
        }

        mutating func parseDocument() throws(ParseError) -> JSONValue {
            skipWS()
            let v = try parseValue()
            skipWS()
            if i != bytes.count { throw fail("unexpected trailing data") }
            return v
        }

        mutating func parseValue() throws(ParseError) -> JSONValue {
            guard i < bytes.count else { throw fail("unexpected end of input") }
            switch bytes[i] {
            case UInt8(ascii: "{"): return try parseObject()
            case UInt8(ascii: "["): return try parseArray()
            case UInt8(ascii: "\""): return .string(try parseString())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
            default: throw fail("unexpected character")
            }
        }

        mutating func literal(_ word: StaticString) throws(ParseError) {
            let n = word.utf8CodeUnitCount
            guard i + n <= bytes.count else { throw fail("invalid literal") }
            let w = word.utf8Start
            for k in 0..<n where bytes[i + k] != w[k] { throw fail("invalid literal") }
            i += n
        }

        mutating func enter() throws(ParseError) {
            depth += 1
            if depth > maxDepth { throw fail("nesting deeper than \(maxDepth)") }
        }

        mutating func parseObject() throws(ParseError) -> JSONValue {
            try enter()
            i += 1
            var o = JSONObject()
            skipWS()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; depth -= 1; return .object(o) }
            while true {
                skipWS()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected object key") }
                let k = try parseString()
                skipWS()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                skipWS()
                let v = try parseValue()
                if o[k] != nil { throw fail("duplicate key \"\(k)\"") }
                o[k] = v
                skipWS()
                guard i < bytes.count else { throw fail("unexpected end of input") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; break }
                throw fail("expected ',' or '}'")
            }
            depth -= 1
            return .object(o)
        }

        mutating func parseArray() throws(ParseError) -> JSONValue {
            try enter()
            i += 1
            var a: [JSONValue] = []
            skipWS()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; depth -= 1; return .array(a) }
            while true {
                skipWS()
                a.append(try parseValue())
                skipWS()
                guard i < bytes.count else { throw fail("unexpected end of input") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; break }
                throw fail("expected ',' or ']'")
            }
            depth -= 1
            return .array(a)
        }

        /// Copies runs of plain bytes in bulk and validates the result as
        /// UTF-8 once (the standard library rejects overlongs, surrogates and
        /// truncated sequences).
        mutating func parseString() throws(ParseError) -> String {
            let open = i
            i += 1
            var out: [UInt8] = []
            let n = bytes.count
            let result: Result<Int, ParseError> = bytes.withUnsafeBufferPointer { b in
                var j = i
                var start = j
                func fail(_ m: String) -> Result<Int, ParseError> { .failure(ParseError(message: m, offset: j)) }
                while true {
                    guard j < n else { return fail("unterminated string") }
                    let c = b[j]
                    if c == UInt8(ascii: "\"") {
                        out.append(contentsOf: UnsafeBufferPointer(rebasing: b[start..<j]))
                        return .success(j + 1)
                    }
                    if c < 0x20 { return fail("control character in string") }
                    if c != UInt8(ascii: "\\") { j += 1; continue }
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: b[start..<j]))
                    j += 1
                    guard j < n else { return fail("unterminated escape") }
                    let e = b[j]
                    j += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        guard var v = Self.hex4(b, j) else { return fail("invalid \\u escape") }
                        j += 4
                        if v >= 0xD800 && v <= 0xDBFF {
                            guard j + 6 <= n, b[j] == UInt8(ascii: "\\"), b[j + 1] == UInt8(ascii: "u"), let lo = Self.hex4(b, j + 2) else {
                                return fail("lone surrogate in \\u escape")
                            }
                            guard lo >= 0xDC00 && lo <= 0xDFFF else { return fail("invalid surrogate pair") }
                            j += 6
                            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00)
                        } else if v >= 0xDC00 && v <= 0xDFFF {
                            return fail("lone surrogate in \\u escape")
                        }
                        guard let scalar = Unicode.Scalar(v) else { return fail("invalid \\u escape") }
                        out.append(contentsOf: Array(String(Character(scalar)).utf8))
                    default: return fail("invalid escape")
                    }
                    start = j
                }
            }
            switch result {
            case .failure(let e): i = e.offset; throw e
            case .success(let end): i = end
            }
            guard let s = String(validating: out, as: UTF8.self) else { throw ParseError(message: "invalid UTF-8 in string", offset: open) }
            return s
        }

        static func hex4(_ b: UnsafeBufferPointer<UInt8>, _ at: Int) -> UInt32? {
            guard at + 4 <= b.count else { return nil }
            var v: UInt32 = 0
            for k in at..<(at + 4) {
                let c = b[k]
                let d: UInt32
                if c >= 0x30 && c <= 0x39 { d = UInt32(c - 0x30) }
                else if c >= 0x61 && c <= 0x66 { d = UInt32(c - 0x61 + 10) }
                else if c >= 0x41 && c <= 0x46 { d = UInt32(c - 0x41 + 10) }
                else { return nil }
                v = v << 4 | d
            }
            return v
        }

        mutating func parseNumber() throws(ParseError) -> JSONValue {
            let start = i
            var isInt = true
            if bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard i < bytes.count else { throw fail("invalid number") }
            if bytes[i] == UInt8(ascii: "0") {
                i += 1
            } else if (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(bytes[i]) {
                while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
            } else {
                throw fail("invalid number")
            }
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                isInt = false
                i += 1
                let d = i
                while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
                if i == d { throw fail("invalid number") }
            }
            if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                isInt = false
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
                let d = i
                while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
                if i == d { throw fail("invalid number") }
            }
            let text = String(decoding: bytes[start..<i], as: UTF8.self)
            if isInt, let v = Int64(text) { return .int(v) }
            if isInt { return .bigInteger(text) }
            guard let d = Double(text), d.isFinite else { throw fail("number out of range") }
            return .double(d)
        }
    }
}
