/// The one error type that crosses the wire. `code` is the stable string
/// clients switch on; `rpcCode` is the JSON-RPC number it maps to.
public struct SandpitError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        // JSON-RPC standard classes
        case parseError = "parse_error"
        case invalidRequest = "invalid_request"
        case methodNotFound = "method_not_found"
        case invalidParams = "invalid_params"
        case `internal` = "internal"
        // Domain errors
        case notFound = "not_found"
        case conflict = "conflict"
        case invalidState = "invalid_state"
        case limitExceeded = "limit_exceeded"
        case timeout = "timeout"
        case busy = "busy"
        case unavailable = "unavailable"
        case permissionDenied = "permission_denied"
        case sandboxFailed = "sandbox_failed"
        case requestTooLarge = "request_too_large"
        /// A template build step failed (its output is in `data`).
        case buildFailed = "build_failed"
        /// A checkpoint's image no longer matches the checksum taken when it was made.
        case checkpointCorrupt = "checkpoint_corrupt"
        /// Downloaded content (an image manifest or layer) does not hash to the digest that names it.
        case digestMismatch = "digest_mismatch"
    }

    public var code: Code
    public var message: String
    /// Extra machine-readable details merged into `error.data`.
    public var details: [String: JSONValue]

    public init(_ code: Code, _ message: String, details: [String: JSONValue] = [:]) {
        self.code = code
        self.message = message
        self.details = details
    }

    /// JSON-RPC error number. Domain errors live in -32000…-32099.
    public var rpcCode: Int {
        switch code {
        case .parseError: -32700
        case .invalidRequest: -32600
        case .methodNotFound: -32601
        case .invalidParams: -32602
        case .internal: -32603
        case .notFound: -32004
        case .conflict: -32009
        case .invalidState: -32010
        case .limitExceeded: -32029
        case .timeout: -32008
        case .busy: -32013
        case .unavailable: -32003
        case .permissionDenied: -32001
        case .sandboxFailed: -32050
        case .requestTooLarge: -32600
        case .buildFailed: -32051
        case .checkpointCorrupt: -32052
        case .digestMismatch: -32053
        }
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public static func notFound(_ what: String, _ id: String) -> SandpitError {
        SandpitError(.notFound, "\(what) \(id) does not exist", details: [what.lowercased() + "Id": .string(id)])
    }

    public static func invalidParams(_ field: String, _ why: String) -> SandpitError {
        SandpitError(.invalidParams, "invalid params: \(field): \(why)", details: ["field": .string(field)])
    }
}
