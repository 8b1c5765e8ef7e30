import SandpitCore
import SandpitEngine
import SandpitProtocol
import Synchronization

/// `context.*` and `code.*`: stateful interpreter contexts.
extension RPCService {
    static let codeMethods: Set<String> = ["context.create", "context.list", "context.delete", "code.run", "code.interrupt"]

    func codeMethod(_ method: String, _ p: Params, requestId: JSONValue, peer: Peer, out: any RPCOutbound) async throws -> JSONValue {
        let caller = peer.caller
        switch method {
        case "context.create":
            try p.expect(only: ["sandboxId", "language"])
            let language = try p.string("language") ?? "python"
            let cid = try await engine.createContext(try p.requireString("sandboxId"), language: language, caller: caller)
            return .object(["contextId": .string(cid), "language": .string(language)])
        case "context.list":
            try p.expect(only: ["sandboxId"])
            let list = try await engine.contexts(try p.requireString("sandboxId"), caller: caller)
            return .object(["contexts": .array(list.map { c in
                .object(["contextId": .string(c.id), "language": .string(c.language), "executionCount": .int(Int64(c.executionCount)), "alive": .bool(c.alive),
                         "snapshots": .object(["executionCounts": .array(c.snapshotCounts.map { .int(Int64($0)) }), "memoryBytes": .int(c.snapshotBytes)])])
            })])
        case "context.delete":
            try p.expect(only: ["sandboxId", "contextId"])
            try await engine.deleteContext(try p.requireString("sandboxId"), contextId: try p.requireString("contextId"), caller: caller)
            return .object([:])
        case "code.interrupt":
            try p.expect(only: ["sandboxId", "contextId"])
            try await engine.interrupt(try p.requireString("sandboxId"), contextId: try p.string("contextId") ?? Engine.defaultContextId, caller: caller)
            return .object([:])
        case "code.run":
            try p.expect(only: ["sandboxId", "code", "contextId", "timeoutMs"])
            let code = try p.requireString("code")
            if code.utf8.count > limits.maxStdinBytes {
                throw SandpitError(.limitExceeded, "code is \(code.utf8.count) bytes; the limit is \(limits.maxStdinBytes)", details: ["field": "code"])
            }
            let timeout = try p.int("timeoutMs", min: 1, max: 7 * 24 * 3_600_000).map { Int($0) }
            // Output is sent in order by one task; the result waits for it.
            // A client that reads slower than the cell prints holds at most
            // maxOutputBacklogBytes here: the rest is dropped and counted.
            let (stream, feed) = AsyncStream.makeStream(of: (line: String, bytes: Int).self)
            let seq = Mutex(0)
            let backlog = Mutex((bytes: 0, dropped: 0))
            let cap = limits.maxOutputBacklogBytes
            let sender = Task {
                for await item in stream {
                    try? await out.send(item.line)
                    backlog.withLock { $0.bytes -= item.bytes }
                }
            }
            let r: CellResult
            do {
                r = try await engine.runCode(try p.requireString("sandboxId"), contextId: try p.string("contextId"), code: code, timeoutMs: timeout,
                                             caller: caller) { cid, s, bytes in
                    let room = backlog.withLock { b -> Bool in
                        guard b.bytes + bytes.count <= cap else { b.dropped += bytes.count; return false }
                        b.bytes += bytes.count
                        return true
                    }
                    guard room else { return }
                    let n = seq.withLock { v -> Int in defer { v += 1 }; return v }
                    let (data, enc) = OutputChunk(seq: n, stream: s, bytes: bytes).wireFields()
                    var o: JSONObject = ["requestId": requestId, "contextId": .string(cid), "stream": .string(s.rawValue), "data": .string(data)]
                    if let enc { o["encoding"] = .string(enc) }
                    o["seq"] = .int(Int64(n))
                    feed.yield((RPC.notification("code.output", .object(o)), bytes.count))
                }
            } catch {
                feed.finish()
                await sender.value
                throw error
            }
            feed.finish()
            await sender.value
            var o: JSONObject = ["contextId": .string(r.contextId), "executionCount": .int(Int64(r.executionCount)),
                                 "results": .array(r.results), "restarted": .bool(r.restarted), "timedOut": .bool(r.timedOut),
                                 "durationMs": .double((r.durationMs * 1000).rounded() / 1000)]
            if let e = r.error { o["error"] = .object(e) }
            if let c = r.exitCode { o["exitCode"] = .int(Int64(c)) }
            o["mainResult"] = r.mainResult.map { .int(Int64($0)) } ?? .null
            if let why = r.restartReason { o["restartReason"] = .string(why) }
            let dropped = backlog.withLock { $0.dropped }
            if dropped > 0 { o["droppedBytes"] = .int(Int64(dropped)) }
            if let step = r.step { Self.put(step, into: &o) }
            return .object(o)
        default:
            throw SandpitError(.methodNotFound, "method not found: \(method)")
        }
    }
}
