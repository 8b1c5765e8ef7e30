import SandpitCore
import SandpitEngine
import SandpitProtocol

/// `port.*`: listening ports inside a sandbox, waiting for one, exposing one to the host.
extension RPCService {
    static let portMethods: Set<String> = ["port.list", "port.wait", "port.expose", "port.unexpose"]

    static func port(_ p: Params, _ key: String = "port") throws(SandpitError) -> Int {
        guard let v = try p.int(key, min: 1, max: 65535) else { throw SandpitError.invalidParams(key, "required (1-65535)") }
        return Int(v)
    }

    func portMethod(_ method: String, _ p: Params, peer: Peer) async throws -> JSONValue {
        let caller = peer.caller
        switch method {
        case "port.list":
            try p.expect(only: ["sandboxId"])
            let sid = try p.requireString("sandboxId")
            let ports = try await engine.ports(sid, caller: caller)
            let exposed = try await engine.exposures(sid, caller: caller)
            return .object(["ports": .array(ports.map(\.json)), "exposed": .array(exposed.map { Self.redacted($0) })])
        case "port.wait":
            try p.expect(only: ["sandboxId", "port", "timeoutMs", "httpPath"])
            let port = try Self.port(p)
            let timeout = Int(try p.int("timeoutMs", min: 0, max: 3_600_000) ?? 30_000)
            let httpPath = try p.string("httpPath")
            if let h = httpPath, !h.hasPrefix("/") || h.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) {
                throw SandpitError.invalidParams("httpPath", "an absolute path such as /health, without spaces or line breaks")
            }
            let r = try await engine.waitPort(try p.requireString("sandboxId"), port: port, timeoutMs: timeout, httpPath: httpPath, caller: caller)
            var o: JSONObject = ["port": .int(Int64(port)), "ready": true, "waitedMs": .int(Int64(r.waitedMs))]
            if let s = r.status { o["status"] = .int(Int64(s)) }
            return .object(o)
        case "port.expose":
            try p.expect(only: ["sandboxId", "port", "on", "token", "hostPort"])
            let on = try p.string("on") ?? "tcp"
            guard on == "tcp" || on == "unix" else { throw SandpitError.invalidParams("on", "\"tcp\" or \"unix\"") }
            let hostPort = try p.int("hostPort", min: 1, max: 65535).map { Int($0) }
            if hostPort != nil && on != "tcp" { throw SandpitError.invalidParams("hostPort", "only with on: \"tcp\"") }
            return try await engine.expose(try p.requireString("sandboxId"), port: try Self.port(p), on: on, token: try p.bool("token") ?? true,
                                           hostPort: hostPort, caller: caller).json
        case "port.unexpose":
            try p.expect(only: ["sandboxId", "exposeId", "port"])
            let exposeId = try p.string("exposeId")
            let port = try p.int("port", min: 1, max: 65535).map { Int($0) }
            guard (exposeId == nil) != (port == nil) else { throw SandpitError.invalidParams("exposeId", "give exposeId or port (all exposures of that port)") }
            let n = try await engine.unexpose(try p.requireString("sandboxId"), exposeId: exposeId, port: port, caller: caller)
            return .object(["closed": .int(Int64(n))])
        default:
            throw SandpitError(.methodNotFound, "method not found: \(method)")
        }
    }

    /// An exposure as listed later: its token is shown once, when it is made.
    static func redacted(_ x: Exposure) -> JSONValue {
        guard case .object(var o) = x.json else { return .null }
        o["token"] = nil
        return .object(o)
    }
}
