#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import SandpitCore
import SandpitOS
import SandpitProtocol
import Synchronization

/// What the CLI, the MCP server and batch mode call: the daemon on a socket,
/// or an engine in the same process. Calls may run concurrently.
public protocol RPCClient: Sendable {
    /// Sends one request and returns its `result` (throws the typed error of
    /// an `error`). `onNotification` gets the request's notifications, in
    /// order, before the call returns. Cancelling the calling task abandons
    /// the request: the call throws `CancellationError` at once and a late
    /// answer is dropped.
    func call(_ method: String, _ params: JSONObject, onNotification: @escaping @Sendable (String, JSONValue) -> Void) async throws -> JSONValue
    func close() async
    /// Fails every call in flight and ends the connection (Ctrl-C): the
    /// daemon sees the client go and stops what it was doing for it.
    func abort() async
}

extension RPCClient {
    public func call(_ method: String, _ params: JSONObject = [:]) async throws -> JSONValue {
        try await call(method, params, onNotification: { _, _ in })
    }
}

/// A response line as the value of `call`, or its error as a `SandpitError`.
public func decodeResponse(_ v: JSONValue) throws -> JSONValue {
    if let e = v["error"]?.objectValue {
        let code = e["data"]?["code"]?.stringValue.flatMap(SandpitError.Code.init(rawValue:)) ?? .internal
        var d: [String: JSONValue] = [:]
        for (k, v) in e["data"]?.objectValue ?? JSONObject() where k != "code" { d[k] = v }
        throw SandpitError(code, e["message"]?.stringValue ?? "error", details: d)
    }
    return v["result"] ?? .null
}

/// The bytes of an `exec.output` / `code.output` notification (text, or base64 with `encoding`).
public func outputBytes(_ p: JSONValue) -> [UInt8] {
    let data = p["data"]?.stringValue ?? ""
    return p["encoding"]?.stringValue == "base64" ? Base64.decode(data) ?? [] : Array(data.utf8)
}

/// One connection to a daemon's Unix socket, multiplexed: many requests in
/// flight at once, each answer matched to its request by id, each
/// notification routed to its request by `requestId`. A reader thread owns
/// the socket's read side; writes go out whole, in order, on a serial queue,
/// so no caller blocks a thread of the cooperative pool on the socket.
public final class DaemonClient: RPCClient, Sendable {
    typealias Handler = @Sendable (String, JSONValue) -> Void

    struct Pending {
        var continuation: CheckedContinuation<JSONValue, Error>
        var onNotification: Handler
    }

    struct State {
        var nextId: Int64 = 1
        var pending: [Int64: Pending] = [:]
        /// Set once the connection is over; every later call fails with it.
        var closed: SandpitError?
    }

    let fd: Int32
    let path: String
    private let state = Mutex(State())
    private let writes = DispatchQueue(label: "sandpit.client.write")

    /// Responses may carry 16 MiB of file data as base64.
    static let maxLineBytes = 64 << 20

    public init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw OSError(call: "socket", errno: errno) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            Glibc.close(fd)
            throw SandpitError(.invalidParams, "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            throw SandpitError(.unavailable, "cannot connect to the sandpit daemon at \(path): \(String(cString: strerror(e))) (is `sandpit serve --socket \(path)` running?)")
        }
        let reader = Reader(client: self)
        OSThread.detach { reader.run() }
    }

    /// Holds the client until the socket ends (`close`, `abort` or the
    /// daemon going away), so the descriptor outlives every read of it.
    struct Reader: Sendable {
        let client: DaemonClient
        var fd: Int32 { client.fd }

        func run() {
            var framer = LineFramer(maxLineBytes: DaemonClient.maxLineBytes)
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            var why = "the daemon closed the connection"
            loop: while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 { why = "reading from the daemon failed: \(String(cString: strerror(errno)))"; break }
                if n == 0 { break }
                for item in framer.push(buf[0..<n]) {
                    switch item {
                    case .line(let l): client.dispatch(l)
                    case .oversized(let size, _):
                        why = "the daemon sent a line of \(size)+ bytes, over the client's limit"
                        break loop
                    }
                }
            }
            client.fail(SandpitError(.unavailable, why))
        }
    }

    /// Routes one line from the daemon (on the reader thread, so in order).
    func dispatch(_ line: [UInt8]) {
        guard let v = try? JSONCodec.parse(line, maxDepth: 256) else { return }
        if let m = v["method"]?.stringValue, v["id"] == nil {
            let params = v["params"] ?? .null
            guard let rid = params["requestId"]?.intValue else { return }
            let handler = state.withLock { $0.pending[rid]?.onNotification }
            handler?(m, params)
            return
        }
        guard let id = v["id"]?.intValue else {
            // An error the daemon could not tie to a request (a line it could not
            // parse): it answers with id null. This client sends only valid lines.
            return
        }
        let p = state.withLock { $0.pending.removeValue(forKey: id) }
        p?.continuation.resume(with: Result { try decodeResponse(v) })
    }

    /// Ends the connection: every call in flight and every later one fails with `error`.
    func fail(_ error: SandpitError) {
        let waiting = state.withLock { s -> [Pending] in
            if s.closed == nil { s.closed = error }
            defer { s.pending = [:] }
            return Array(s.pending.values)
        }
        for p in waiting { p.continuation.resume(throwing: error) }
    }

    public func call(_ method: String, _ params: JSONObject, onNotification: @escaping @Sendable (String, JSONValue) -> Void) async throws -> JSONValue {
        let id = state.withLock { s -> Int64 in defer { s.nextId += 1 }; return s.nextId }
        var line = Array(RPC.request(id: .int(id), method: method, params: params).utf8)
        line.append(UInt8(ascii: "\n"))
        let bytes = line
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (k: CheckedContinuation<JSONValue, Error>) in
                // Registered under the lock that `onCancel` takes: a call is
                // either cancelled before it is registered or removed by it.
                let refused = state.withLock { s -> (any Error)? in
                    if let e = s.closed { return e }
                    if Task.isCancelled { return CancellationError() }
                    s.pending[id] = Pending(continuation: k, onNotification: onNotification)
                    return nil
                }
                if let refused { k.resume(throwing: refused); return }
                writes.async { [self] in
                    if let e = writeAll(bytes) { fail(e) }
                }
            }
        } onCancel: {
            let p = state.withLock { $0.pending.removeValue(forKey: id) }
            p?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Writes a whole line; an error ends the connection.
    private func writeAll(_ bytes: [UInt8]) -> SandpitError? {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return SandpitError(.unavailable, "the daemon closed the connection: \(String(cString: strerror(errno)))") }
            off += n
        }
        return nil
    }

    public func close() async {
        // Queued writes go out first; then the reader sees EOF and ends.
        await withCheckedContinuation { (k: CheckedContinuation<Void, Never>) in writes.async { k.resume() } }
        shutdown(fd, Int32(SHUT_RDWR))
        fail(SandpitError(.unavailable, "the connection was closed"))
    }

    public func abort() async {
        shutdown(fd, Int32(SHUT_RDWR))
        fail(SandpitError(.unavailable, "the connection was closed"))
    }

    deinit { Glibc.close(fd) }
}
