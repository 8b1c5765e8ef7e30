#if canImport(Glibc)
import Glibc
#endif
import Logging
import SandpitCore
import SandpitDaemon
import SandpitEngine
import SandpitOS
import SandpitProtocol
import Synchronization

/// The CLI talks JSON-RPC either to a daemon's socket or to an in-process service.
protocol RPCClient: Sendable {
    func call(_ method: String, _ params: JSONObject, onNotification: @escaping @Sendable (String, JSONValue) -> Void) async throws -> JSONValue
    func close() async
    /// Stops what `call` is waiting for (Ctrl-C): the socket is shut down, so
    /// the daemon sees the client go; in-process calls stop by task cancellation.
    func abort() async
}

extension RPCClient {
    func call(_ method: String, _ params: JSONObject = [:]) async throws -> JSONValue {
        try await call(method, params, onNotification: { _, _ in })
    }
}

func decodeResponse(_ v: JSONValue) throws -> JSONValue {
    if let e = v["error"]?.objectValue {
        let code = e["data"]?["code"]?.stringValue.flatMap(SandpitError.Code.init(rawValue:)) ?? .internal
        var details = e["data"]?.objectValue ?? JSONObject()
        details["code"] = nil
        var d: [String: JSONValue] = [:]
        for (k, v) in details { d[k] = v }
        throw SandpitError(code, e["message"]?.stringValue ?? "error", details: d)
    }
    return v["result"] ?? .null
}

/// The bytes of an `exec.output` / `code.output` notification (text, or base64 with `encoding`).
func outputBytes(_ p: JSONValue) -> [UInt8] {
    let data = p["data"]?.stringValue ?? ""
    return p["encoding"]?.stringValue == "base64" ? Base64.decode(data) ?? [] : Array(data.utf8)
}

/// A blocking line client on a Unix socket (the CLI makes one call at a time).
final class SocketClient: RPCClient, @unchecked Sendable {
    let fd: Int32
    var buffer: [UInt8] = []
    var nextId: Int64 = 1

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw OSError(call: "socket", errno: errno) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SandpitError(.invalidParams, "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            throw SandpitError(.unavailable, "cannot connect to the sandpit daemon at \(path): \(String(cString: strerror(e))) (is `sandpit serve --socket \(path)` running?)")
        }
    }

    func call(_ method: String, _ params: JSONObject, onNotification: @escaping @Sendable (String, JSONValue) -> Void) async throws -> JSONValue {
        let id = nextId
        nextId += 1
        var line = Array(RPC.request(id: .int(id), method: method, params: params).utf8)
        line.append(UInt8(ascii: "\n"))
        var off = 0
        while off < line.count {
            let n = line.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 { if errno == EINTR { continue }; throw OSError(call: "write", errno: errno) }
            off += n
        }
        while true {
            let l = try readLine()
            let v = try JSONCodec.parse(l, maxDepth: 256)
            if let m = v["method"]?.stringValue, v["id"] == nil {
                onNotification(m, v["params"] ?? .null)
                continue
            }
            if v["id"] == .int(id) || v["id"] == .null { return try decodeResponse(v) }
        }
    }

    func readLine() throws -> [UInt8] {
        while true {
            if let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let l = Array(buffer[..<nl])
                buffer.removeFirst(nl + 1)
                return l
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw OSError(call: "read", errno: errno) }
            if n == 0 { throw SandpitError(.unavailable, "the daemon closed the connection") }
            buffer += chunk[0..<n]
        }
    }

    func close() async { Glibc.close(fd) }

    func abort() async { shutdown(fd, Int32(SHUT_RDWR)) }
}

/// Runs the engine inside the CLI process, for use without a daemon.
final class InProcessClient: RPCClient {
    let service: RPCService
    let counter = Atomic<Int64>(1)

    init(service: RPCService) { self.service = service }

    struct Collector: RPCOutbound {
        let onLine: @Sendable (String) -> Void
        func send(_ line: String) async throws { onLine(line) }
    }

    func call(_ method: String, _ params: JSONObject, onNotification: @escaping @Sendable (String, JSONValue) -> Void) async throws -> JSONValue {
        let id = counter.add(1, ordering: .relaxed).newValue
        let response = Mutex<JSONValue?>(nil)
        let out = Collector { line in
            guard let v = try? JSONCodec.parse(line, maxDepth: 256) else { return }
            if let m = v["method"]?.stringValue, v["id"] == nil { onNotification(m, v["params"] ?? .null) } else { response.withLock { $0 = v } }
        }
        let req = RPCRequest(id: .int(id), method: method, params: Params(params))
        await service.handle(req, peer: Peer(uid: Int64(getuid()), admin: true), out: out)
        guard let r = response.withLock({ $0 }) else { throw SandpitError(.internal, "no response") }
        return try decodeResponse(r)
    }

    func close() async { await service.engine.shutdown(keep: false) }

    func abort() async {}
}
