import SandpitCore

/// A validated JSON-RPC 2.0 request. `id == nil` means a notification.
public struct RPCRequest: Sendable {
    public var id: JSONValue?
    public var method: String
    public var params: Params

    public init(id: JSONValue?, method: String, params: Params) {
        self.id = id
        self.method = method
        self.params = params
    }
}

/// A request line that could not be accepted, and the id to answer with.
public struct RPCRejection: Error, Sendable {
    public var id: JSONValue
    public var error: SandpitError
}

public enum RPC {
    public static let version = "2.0"

    /// Parses one line. Errors carry the request's id when it could be read.
    public static func parse(_ line: [UInt8], maxDepth: Int = JSONCodec.defaultMaxDepth) -> Result<RPCRequest, RPCRejection> {
        let value: JSONValue
        do {
            value = try JSONCodec.parse(line, maxDepth: maxDepth)
        } catch {
            return .failure(RPCRejection(id: .null, error: SandpitError(.parseError, "parse error: \(error)")))
        }
        guard let o = value.objectValue else {
            let what = value.arrayValue != nil ? "batch requests are not supported; send one object per line" : "a request must be a JSON object"
            return .failure(RPCRejection(id: .null, error: SandpitError(.invalidRequest, what)))
        }
        var id: JSONValue? = o["id"]
        if let i = id {
            switch i {
            case .string, .int, .double, .bigInteger, .null: break
            default:
                return .failure(RPCRejection(id: .null, error: SandpitError(.invalidRequest, "id must be a string, number or null")))
            }
        }
        let replyId = id ?? .null
        guard o["jsonrpc"] == .string(version) else {
            return .failure(RPCRejection(id: replyId, error: SandpitError(.invalidRequest, "jsonrpc must be \"2.0\"")))
        }
        guard let method = o["method"]?.stringValue, !method.isEmpty else {
            return .failure(RPCRejection(id: replyId, error: SandpitError(.invalidRequest, "method must be a non-empty string")))
        }
        for (k, _) in o where !["jsonrpc", "id", "method", "params"].contains(k) {
            return .failure(RPCRejection(id: replyId, error: SandpitError(.invalidRequest, "unknown member \"\(k)\" in request")))
        }
        var params = JSONObject()
        switch o["params"] {
        case nil, .null?: break
        case .object(let p)?: params = p
        default:
            return .failure(RPCRejection(id: replyId, error: SandpitError.invalidParams("params", "must be an object of named parameters")))
        }
        if id == .null { id = .null }
        return .success(RPCRequest(id: id, method: method, params: Params(params)))
    }

    /// The top-level `"id"` of a request line known only by its first bytes (a
    /// line over the size limit), so its rejection reaches the caller that waits
    /// for it. `.null` when the id is not among those bytes or is not a string or
    /// number.
    public static func idOfTruncatedRequest(_ head: [UInt8]) -> JSONValue {
        var s = HeadScanner(bytes: head)
        guard s.take(UInt8(ascii: "{")) else { return .null }
        while true {
            guard let key = s.string(), s.take(UInt8(ascii: ":")) else { return .null }
            if String(decoding: key, as: UTF8.self) == "id" {
                guard let v = s.scalarValue(), let id = try? JSONCodec.parse(v) else { return .null }
                switch id {
                case .string, .int, .double, .bigInteger: return id
                default: return .null
                }
            }
            guard s.skipValue(), s.take(UInt8(ascii: ",")) else { return .null }
        }
    }

    /// Just enough of a JSON reader to walk the members of a truncated object.
    private struct HeadScanner {
        let bytes: [UInt8]
        var i = 0

        mutating func skipSpace() {
            while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
        }

        mutating func take(_ c: UInt8) -> Bool {
            skipSpace()
            guard i < bytes.count, bytes[i] == c else { return false }
            i += 1
            return true
        }

        /// A string's raw bytes with its quotes (so `JSONCodec` can decode it); nil if cut off.
        mutating func quoted() -> ArraySlice<UInt8>? {
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { return nil }
            let start = i
            i += 1
            while i < bytes.count {
                switch bytes[i] {
                case UInt8(ascii: "\\"): i += 2
                case UInt8(ascii: "\""): i += 1; return bytes[start..<i]
                default: i += 1
                }
            }
            return nil
        }

        mutating func string() -> [UInt8]? {
            guard let q = quoted(), let v = try? JSONCodec.parse(Array(q)), let s = v.stringValue else { return nil }
            return Array(s.utf8)
        }

        /// The raw bytes of a string or number value; nil for anything else or if cut off.
        mutating func scalarValue() -> [UInt8]? {
            skipSpace()
            guard i < bytes.count else { return nil }
            if bytes[i] == UInt8(ascii: "\"") { return quoted().map(Array.init) }
            let start = i
            while i < bytes.count, "+-.0123456789eE".utf8.contains(bytes[i]) { i += 1 }
            return i > start && i < bytes.count ? Array(bytes[start..<i]) : nil
        }

        /// Steps over one value of any kind; false if it is cut off.
        mutating func skipValue() -> Bool {
            skipSpace()
            var depth = 0
            while i < bytes.count {
                switch bytes[i] {
                case UInt8(ascii: "\""):
                    guard quoted() != nil else { return false }
                    if depth == 0 { return true }
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { i += 1; return true }
                    if depth < 0 { return false }
                case UInt8(ascii: ","):
                    if depth == 0 { return true }
                default: break
                }
                i += 1
            }
            return false
        }
    }

    public static func response(id: JSONValue, result: JSONValue) -> String {
        JSONCodec.encode(.object(["jsonrpc": .string(version), "id": id, "result": result]))
    }

    public static func error(id: JSONValue, _ e: SandpitError) -> String {
        var data: JSONObject = ["code": .string(e.code.rawValue)]
        for (k, v) in e.details.sorted(by: { $0.key < $1.key }) where k != "code" { data[k] = v }
        return JSONCodec.encode(.object([
            "jsonrpc": .string(version), "id": id,
            "error": .object(["code": .int(Int64(e.rpcCode)), "message": .string(e.message), "data": .object(data)]),
        ]))
    }

    public static func notification(_ method: String, _ params: JSONValue) -> String {
        JSONCodec.encode(.object(["jsonrpc": .string(version), "method": .string(method), "params": params]))
    }

    public static func request(id: JSONValue, method: String, params: JSONObject) -> String {
        JSONCodec.encode(.object(["jsonrpc": .string(version), "id": id, "method": .string(method), "params": .object(params)]))
    }
}

/// Typed access to a request's named params. Every error names the field;
/// `expect(only:)` rejects fields a method does not know (typos fail loudly).
public struct Params: Sendable {
    public let object: JSONObject

    public init(_ object: JSONObject) { self.object = object }

    public func expect(only keys: Set<String>) throws(SandpitError) {
        for (k, _) in object where !keys.contains(k) {
            throw SandpitError.invalidParams(k, "unknown parameter (expected one of: \(keys.sorted().joined(separator: ", ")))")
        }
    }

    func present(_ k: String) -> JSONValue? {
        guard let v = object[k], v != .null else { return nil }
        return v
    }

    public func string(_ k: String) throws(SandpitError) -> String? {
        guard let v = present(k) else { return nil }
        guard let s = v.stringValue else { throw SandpitError.invalidParams(k, "expected a string, got \(v.typeName)") }
        return s
    }

    public func requireString(_ k: String) throws(SandpitError) -> String {
        guard let s = try string(k) else { throw SandpitError.invalidParams(k, "required") }
        return s
    }

    public func int(_ k: String, min: Int64 = Int64.min, max: Int64 = Int64.max) throws(SandpitError) -> Int64? {
        guard let v = present(k) else { return nil }
        guard let i = v.intValue else { throw SandpitError.invalidParams(k, "expected an integer, got \(v.typeName)") }
        guard i >= min && i <= max else { throw SandpitError.invalidParams(k, "must be between \(min) and \(max)") }
        return i
    }

    public func bool(_ k: String) throws(SandpitError) -> Bool? {
        guard let v = present(k) else { return nil }
        guard let b = v.boolValue else { throw SandpitError.invalidParams(k, "expected a boolean, got \(v.typeName)") }
        return b
    }

    public func stringArray(_ k: String) throws(SandpitError) -> [String]? {
        guard let v = present(k) else { return nil }
        guard let a = v.arrayValue else { throw SandpitError.invalidParams(k, "expected an array of strings, got \(v.typeName)") }
        var out: [String] = []
        for (i, e) in a.enumerated() {
            guard let s = e.stringValue else { throw SandpitError.invalidParams("\(k)[\(i)]", "expected a string, got \(e.typeName)") }
            out.append(s)
        }
        return out
    }

    public func stringMap(_ k: String) throws(SandpitError) -> [String: String]? {
        guard let v = present(k) else { return nil }
        guard let o = v.objectValue else { throw SandpitError.invalidParams(k, "expected an object of strings, got \(v.typeName)") }
        var out: [String: String] = [:]
        for (key, e) in o {
            guard let s = e.stringValue else { throw SandpitError.invalidParams("\(k).\(key)", "expected a string, got \(e.typeName)") }
            out[key] = s
        }
        return out
    }

    public func object(_ k: String) throws(SandpitError) -> Params? {
        guard let v = present(k) else { return nil }
        guard let o = v.objectValue else { throw SandpitError.invalidParams(k, "expected an object, got \(v.typeName)") }
        return Params(o)
    }
}
