#if canImport(Glibc)
import Glibc
#endif
import Logging
import SandpitCore
import SandpitDaemon
import SandpitEngine
import SandpitOS
import SandpitClient
import SandpitProtocol
import Synchronization

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
