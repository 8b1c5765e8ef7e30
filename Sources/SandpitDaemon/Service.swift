#if canImport(Glibc)
import Glibc
#endif
import Logging
import SandpitCore
import SandpitEngine
import SandpitOS
import SandpitProtocol
import Synchronization

/// Where a request's notifications and response go. Transports implement it.
public protocol RPCOutbound: Sendable {
    /// Sends one line; throws `PeerGone` when the peer is gone.
    func send(_ line: String) async throws
}

/// The client closed its connection (or its stdin/stdout) before all of an
/// answer could be written: the end of that request, not the daemon's error.
public struct PeerGone: Error, CustomStringConvertible {
    public var description: String
    public init(_ why: String) { description = why }
}

/// One connection's client: its uid (from SO_PEERCRED on the socket, or the
/// daemon's own for stdio and in-process) and whether it is an admin: it runs
/// as the daemon's owner, or it presented the admin token with `server.auth`.
public final class Peer: Sendable {
    public let uid: Int64
    /// This connection's number: the unit of fairness in admission queues.
    public let connection: Int64 = Peer.counter.add(1, ordering: .relaxed).newValue
    static let counter = Atomic<Int64>(0)
    private let isAdmin: Atomic<Bool>
    /// A pidfd of the process that connected (Unix sockets; -1 otherwise):
    /// `fs.upload`/`fs.download` with `fd` duplicate that process's descriptor.
    public let pidfd: Int32
    public init(uid: Int64, admin: Bool, pidfd: Int32 = -1) {
        self.uid = uid
        self.isAdmin = Atomic(admin)
        self.pidfd = pidfd
    }
    deinit { if pidfd >= 0 { close(pidfd) } }
    public var caller: Caller { Caller(uid: uid, admin: isAdmin.load(ordering: .acquiring)) }
    func elevate() { isAdmin.store(true, ordering: .releasing) }
    /// Sandboxes this connection holds awake (`sandbox.keepalive` with `whileConnected`).
    let holds = Mutex<Set<String>>([])
    /// Sandboxes made with `deleteOnDisconnect`: deleted when this connection ends.
    let owned = Mutex<Set<String>>([])
    /// The connection ended (`owned` takes no more sandboxes).
    let gone = Atomic<Bool>(false)
    /// Uploads this connection started and has not finished (aborted when it goes away).
    let uploads = Mutex<Set<String>>([])
    /// `sandbox.watch`: the engine observer tokens (states, ports) and the ids watched (empty = all this client may see).
    let watch = Mutex<(token: Int64?, portToken: Int64?, ids: Set<String>)>((nil, nil, []))
    /// `fs.watch` watches this connection started: watch id → sandbox id.
    let fileWatches = Mutex<[String: String]>([:])
}

/// The JSON-RPC service: validates params, calls the engine, shapes results.
/// It holds all method logic; transports only decode, call `handle`, encode.
public final class RPCService: Sendable {
    public let engine: Engine
    public let limits: Limits
    let logger: Logger
    /// Token that makes a connection admin (`server.auth`); nil disables it.
    let adminToken: String?

    public struct Limits: Sendable {
        public var maxLineBytes: Int
        public var maxStdinBytes: Int
        /// `code.output` not yet written to a slow client, per cell; past it,
        /// chunks are dropped and counted (`droppedBytes` in the result).
        public var maxOutputBacklogBytes = 16 << 20
        public init(maxLineBytes: Int = 16 << 20, maxStdinBytes: Int = 8 << 20) {
            self.maxLineBytes = maxLineBytes
            self.maxStdinBytes = maxStdinBytes
        }
    }

    public init(engine: Engine, limits: Limits = Limits(), adminToken: String? = nil, logger: Logger) {
        self.engine = engine
        self.limits = limits
        self.adminToken = adminToken
        self.logger = logger
    }

    public static let methods = ["server.info", "server.auth", "policy.get", "sandbox.create", "sandbox.pause", "sandbox.resume",
                                 "sandbox.hibernate", "sandbox.keepalive", "sandbox.watch", "sandbox.unwatch", "sandbox.get", "sandbox.list", "sandbox.delete",
                                 "exec.run", "exec.kill", "exec.list", "exec.logs", "exec.input", "exec.resize", "exec.wait", "checkpoint.list", "checkpoint.create", "sandbox.restore",
                                 "sandbox.fork", "storage.info", "batch.run", "template.build", "template.list", "template.get", "template.delete"] + fileMethods.sorted() + portMethods.sorted() + codeMethods.sorted()

    /// Methods that may hold a thread for long (building sandboxes and
    /// templates, copying or removing disks, base64 of up to 16 MiB of file
    /// contents, whole batches): they run on the cooperative pool, so the control loop
    /// that every connection and agent channel shares never waits for them.
    /// Everything else runs on the loop the request came in on.
    static let offLoop: Set<String> = [
        "sandbox.create", "sandbox.delete", "sandbox.restore", "sandbox.fork", "sandbox.pause", "sandbox.hibernate", "sandbox.resume",
        "checkpoint.create", "template.build", "template.delete", "batch.run", "storage.info",
        "fs.read", "fs.upload", "fs.uploadChunk", "fs.uploadCommit", "fs.download", "fs.writeMany",
    ]

    /// Answers one request: streams its notifications to `out`, then its response.
    public func handle(_ req: RPCRequest, peer: Peer, out: any RPCOutbound) async {
        let id = req.id ?? .null
        do {
            let result = Self.offLoop.contains(req.method)
                ? try await withTaskExecutorPreference(globalConcurrentExecutor) { try await dispatch(req, requestId: id, peer: peer, out: out) }
                : try await dispatch(req, requestId: id, peer: peer, out: out)
            if req.id != nil { try await out.send(RPC.response(id: id, result: result)) }
        } catch let e as SandpitError {
            if req.id != nil { try? await out.send(RPC.error(id: id, e)) }
        } catch is CancellationError {
            return
        } catch let e as PeerGone {
            logger.debug("the client left before its answer", metadata: ["method": "\(req.method)", "why": "\(e)"])
        } catch {
            logger.error("internal error", metadata: ["method": "\(req.method)", "error": "\(error)"])
            if req.id != nil { try? await out.send(RPC.error(id: id, SandpitError(.internal, "internal error: \(error)"))) }
        }
    }

    func dispatch(_ req: RPCRequest, requestId: JSONValue, peer: Peer, out: any RPCOutbound) async throws -> JSONValue {
        let p = req.params
        let caller = peer.caller
        switch req.method {
        case "server.info":
            try p.expect(only: [])
            return await info(caller)
        case "server.auth":
            try p.expect(only: ["token"])
            let token = try p.requireString("token")
            guard let expected = adminToken, Identifier.secretsEqual(token, expected) else {
                throw SandpitError(.permissionDenied, "wrong admin token")
            }
            peer.elevate()
            return .object(["admin": true, "uid": .int(peer.uid)])
        case "policy.get":
            try p.expect(only: ["name", "limits"])
            let name = try p.string("name") ?? "default"
            let purpose = engine.policies.policies[name]?.purpose ?? .sandbox
            return try engine.plan(policy: name, limits: try p.object("limits")?.object ?? [:], purpose: purpose).json
        case "sandbox.create":
            try p.expect(only: ["template", "policy", "limits", "metadata", "idle", "queueTimeoutMs", "deleteOnDisconnect"])
            let tied = try p.bool("deleteOnDisconnect") ?? false
            let metadata = try p.stringMap("metadata") ?? [:]
            if metadata.count > 64 { throw SandpitError.invalidParams("metadata", "at most 64 keys") }
            let idle = try p.object("idle")
            try idle?.expect(only: ["pauseAfterMs", "hibernateAfterMs", "deleteAfterMs"])
            let t0 = Clock.monotonicNs()
            let queued = Queued()
            let r = try await engine.create(template: try p.string("template") ?? "default", policy: try p.string("policy") ?? "default",
                                            limits: try p.object("limits")?.object ?? [:], idle: idle?.object ?? [:],
                                            metadata: metadata, caller: caller,
                                            admit: try ticket(p, peer: peer, requestId: requestId, out: out, waitingFor: "sandbox", queued: queued))
            if tied { try await tie(r.id, to: peer) }
            guard case .object(var o) = sandboxJSON(r, caller: caller) else { return .null }
            o["timings"] = .object(["queueUs": .int(queued.us), "totalUs": .int(Int64((Clock.monotonicNs() - t0) / 1000))])
            return .object(o)
        case "sandbox.get":
            try p.expect(only: ["sandboxId"])
            return sandboxJSON(try await engine.sandbox(try p.requireString("sandboxId"), caller: caller), caller: caller)
        case "sandbox.list":
            try p.expect(only: ["state", "metadata", "limit", "cursor"])
            var state: SandboxState?
            if let s = try p.string("state") {
                guard let st = SandboxState(rawValue: s) else {
                    throw SandpitError.invalidParams("state", "must be one of \(SandboxState.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                state = st
            }
            let limit = Int(try p.int("limit", min: 1, max: 1000) ?? 100)
            let page = try await engine.list(state: state, metadata: try p.stringMap("metadata") ?? [:], limit: limit, cursor: try p.string("cursor"), caller: caller)
            var o: JSONObject = ["sandboxes": .array(page.sandboxes.map { sandboxJSON($0, caller: caller) })]
            if let n = page.nextCursor { o["nextCursor"] = .string(n) }
            return .object(o)
        case "sandbox.delete":
            try p.expect(only: ["sandboxId"])
            try await engine.delete(try p.requireString("sandboxId"), caller: caller)
            return .object([:])
        case "exec.run":
            return try await execRun(p, requestId: requestId, peer: peer, out: out)
        case "exec.kill":
            try p.expect(only: ["sandboxId", "execId", "signal"])
            let sig = try Signals.parse(p.object["signal"]) ?? SIGKILL
            try await engine.kill(try p.requireString("sandboxId"), execId: try p.requireString("execId"), signal: sig, caller: caller)
            return .object([:])
        case "exec.input":
            try p.expect(only: ["sandboxId", "execId", "data", "dataBase64", "eof"])
            var bytes: [UInt8] = []
            if let d = try p.string("data") { bytes = Array(d.utf8) }
            if let b = try p.string("dataBase64") {
                guard bytes.isEmpty else { throw SandpitError.invalidParams("dataBase64", "give data or dataBase64, not both") }
                guard let d = Base64.decode(b) else { throw SandpitError.invalidParams("dataBase64", "not valid base64") }
                bytes = d
            }
            let eof = try p.bool("eof") ?? false
            if bytes.isEmpty && !eof { throw SandpitError.invalidParams("data", "give data, dataBase64 or eof") }
            try await engine.input(try p.requireString("sandboxId"), execId: try p.requireString("execId"), bytes, eof: eof, caller: caller)
            return .object([:])
        case "exec.resize":
            try p.expect(only: ["sandboxId", "execId", "rows", "cols"])
            guard let rows = try p.int("rows", min: 1, max: 1000), let cols = try p.int("cols", min: 1, max: 1000) else {
                throw SandpitError.invalidParams("rows", "rows and cols are required (1-1000)")
            }
            try await engine.resize(try p.requireString("sandboxId"), execId: try p.requireString("execId"), rows: Int(rows), cols: Int(cols), caller: caller)
            return .object([:])
        case "exec.wait":
            try p.expect(only: ["sandboxId", "execId", "yieldMs", "sinceSeq", "maxOutputBytes", "follow"])
            let sid = try p.requireString("sandboxId"), eid = try p.requireString("execId")
            guard case .live(let s) = try await engine.logs(sid, execId: eid, caller: caller) else {
                throw SandpitError(.invalidState, "exec \(eid) is no longer live (the daemon restarted since): read its summary with exec.logs")
            }
            if try p.bool("follow") == true {
                // Attach: output streams as exec.output notifications, as for a foreground exec.run.
                return try await stream(s, since: Int(try p.int("sinceSeq", min: 0) ?? 0), requestId: requestId, out: out)
            }
            return try await collect(s, since: Int(try p.int("sinceSeq", min: 0) ?? 0), yieldMs: try p.int("yieldMs", min: 0, max: 3_600_000).map { Int($0) },
                                     maxOutputBytes: try p.int("maxOutputBytes", min: 64, max: 64 << 20).map { Int($0) })
        case "exec.list":
            try p.expect(only: ["sandboxId", "limit"])
            let list = try await engine.execs(try p.requireString("sandboxId"), limit: Int(try p.int("limit", min: 1, max: 1000) ?? 100), caller: caller)
            return .object(["execs": .array(list.map(Self.execJSON))])
        case "exec.logs":
            try p.expect(only: ["sandboxId", "execId", "sinceSeq"])
            let since = Int(try p.int("sinceSeq", min: 0) ?? 0)
            switch try await engine.logs(try p.requireString("sandboxId"), execId: try p.requireString("execId"), caller: caller) {
            case .live(let s):
                let (chunks, outcome) = s.logs(since: since)
                var o: JSONObject = ["execId": .string(s.execId), "chunks": .array(chunks.map(Self.chunkJSON)), "done": .bool(outcome != nil)]
                if let outcome { o["result"] = Self.resultJSON(s.execId, outcome) }
                return .object(o)
            case .archived(let r):
                var o: JSONObject = ["execId": .string(r.execId), "chunks": [], "done": .bool(r.state != .running), "expired": true]
                o["result"] = .object([
                    "execId": .string(r.execId), "exitCode": r.exitCode.map { .int(Int64($0)) } ?? .null,
                    "timedOut": .bool(r.timedOut), "stdoutBytes": .int(r.stdoutBytes), "stderrBytes": .int(r.stderrBytes),
                    "state": .string(r.state.rawValue),
                ])
                return .object(o)
            }
        case "sandbox.pause":
            try p.expect(only: ["sandboxId"])
            return sandboxJSON(try await engine.pause(try p.requireString("sandboxId"), caller: caller), caller: caller)
        case "sandbox.resume":
            try p.expect(only: ["sandboxId"])
            let (r, w) = try await engine.resume(try p.requireString("sandboxId"), caller: caller)
            return withWake(sandboxJSON(r, caller: caller), w)
        case "sandbox.hibernate":
            try p.expect(only: ["sandboxId"])
            return sandboxJSON(try await engine.hibernate(try p.requireString("sandboxId"), caller: caller), caller: caller)
        case "sandbox.keepalive":
            try p.expect(only: ["sandboxId", "forMs", "whileConnected"])
            let id = try p.requireString("sandboxId")
            let forMs = try p.int("forMs", min: 0, max: 7 * 24 * 3_600_000) ?? 600_000
            let (r, w) = try await engine.keepalive(id, forMs: forMs, caller: caller)
            if try p.bool("whileConnected") == true {
                let fresh = peer.holds.withLock { $0.insert(id).inserted }
                if fresh { try engine.hold(id, caller: caller) }
            }
            var o = withWake(sandboxJSON(r, caller: caller), w)
            if case .object(var obj) = o {
                obj["keepaliveUntil"] = .string(Timestamp.iso8601(ms: Clock.nowMs() + forMs))
                o = .object(obj)
            }
            return o
        case "sandbox.watch":
            try p.expect(only: ["sandboxId"])
            let id = try p.string("sandboxId")
            if let id { _ = try await engine.sandbox(id, caller: caller) }
            let needsObserver = peer.watch.withLock { w -> Bool in
                if let id { w.ids.insert(id) } else { w.ids = [] }
                return w.token == nil
            }
            if needsObserver {
                let token = engine.observe { [weak peer] e in
                    guard let peer, Self.watches(peer, e.sandboxId, owner: e.owner) else { return }
                    var o: JSONObject = ["sandboxId": .string(e.sandboxId), "state": .string(e.state.rawValue)]
                    o["reason"] = e.reason.map { .string($0) } ?? .null
                    if let w = e.wake { o["wake"] = w.json }
                    let line = RPC.notification("sandbox.state", .object(o))
                    Task { try? await out.send(line) }
                }
                let portToken = engine.observePorts { [weak peer] e in
                    guard let peer, Self.watches(peer, e.sandboxId, owner: e.owner) else { return }
                    guard case .object(var o) = e.port.json else { return }
                    o["sandboxId"] = .string(e.sandboxId)
                    let line = RPC.notification(e.opened ? "port.opened" : "port.closed", .object(o))
                    Task { try? await out.send(line) }
                }
                peer.watch.withLock { $0.token = token; $0.portToken = portToken }
            }
            return .object(["watching": id.map { .string($0) } ?? "all"])
        case "sandbox.unwatch":
            try p.expect(only: [])
            stopWatching(peer)
            return .object([:])
        case "checkpoint.list":
            try p.expect(only: ["sandboxId"])
            let id = try p.requireString("sandboxId")
            let list = try await engine.checkpoints(id, caller: caller)
            let quota = try await engine.checkpointQuota(id, caller: caller)
            return .object(["checkpoints": .array(list.map(\.json)), "bytes": .int(list.reduce(0) { $0 + $1.bytes }),
                            "quotaBytes": quota.map { .int($0) } ?? .null])
        case "checkpoint.create":
            try p.expect(only: ["sandboxId", "name"])
            let name = try p.string("name")
            if let n = name, n.isEmpty || n.count > 200 { throw SandpitError.invalidParams("name", "1 to 200 characters") }
            return try await engine.createCheckpoint(try p.requireString("sandboxId"), name: name, caller: caller).json
        case "sandbox.restore":
            try p.expect(only: ["sandboxId", "checkpointId", "step"])
            let (step, ck) = try Self.checkpointRef(p, required: true)
            let r = try await engine.restore(try p.requireString("sandboxId"), step: step, checkpointId: ck, caller: caller)
            guard case .object(var o) = sandboxJSON(r.sandbox, caller: caller) else { return .null }
            o["restored"] = .array(r.restored.map { .string($0) })
            o["lost"] = .array(r.lost.map { .string($0) })
            if !r.contexts.isEmpty {
                o["contexts"] = .array(r.contexts.map { c in .object(["contextId": .string(c.id), "interpreter": .string(c.outcome),
                                                                     "executionCount": c.executionCount.map { .int(Int64($0)) } ?? .null]) })
            }
            o["checkpoint"] = r.checkpoint.json
            return .object(o)
        case "sandbox.fork":
            try p.expect(only: ["sandboxId", "checkpointId", "step", "count", "deleteOnDisconnect", "idle", "metadata"])
            let (step, ck) = try Self.checkpointRef(p, required: false)
            let count = Int(try p.int("count", min: 1, max: 32) ?? 1)
            let tied = try p.bool("deleteOnDisconnect") ?? false
            let idle = try p.object("idle")
            try idle?.expect(only: ["pauseAfterMs", "hibernateAfterMs", "deleteAfterMs"])
            let metadata = try p.stringMap("metadata") ?? [:]
            if metadata.count > 64 { throw SandpitError.invalidParams("metadata", "at most 64 keys") }
            let made = try await engine.fork(try p.requireString("sandboxId"), step: step, checkpointId: ck, count: count,
                                             idle: idle?.object ?? [:], metadata: metadata, caller: caller)
            if tied { for s in made.sandboxes { try await tie(s.id, to: peer) } }
            return .object(["sandboxes": .array(made.sandboxes.map { sandboxJSON($0, caller: caller) }),
                            "restored": ["filesystem"], "lost": .array(made.lost.map { .string($0) })])
        case "storage.info":
            try p.expect(only: [])
            // A tenant sees what its own sandboxes use, not the daemon's store, paths or totals.
            return caller.admin ? engine.storageReport() : await engine.storageReport(owner: caller.uid)
        case let m where Self.fileMethods.contains(m):
            return try await fileMethod(m, p, requestId: requestId, peer: peer, out: out)
        case let m where Self.portMethods.contains(m):
            return try await portMethod(m, p, peer: peer)
        case "batch.run":
            return try await batchRun(p, requestId: requestId, peer: peer, out: out)
        case let m where Self.codeMethods.contains(m):
            return try await codeMethod(m, p, requestId: requestId, peer: peer, out: out)
        case "template.build":
            return try await templateBuild(p, requestId: requestId, caller: caller, out: out)
        case "template.list":
            try p.expect(only: ["name"])
            var out: [JSONValue] = []
            for t in try await engine.templates(name: try p.string("name"), caller: caller) { out.append(await templateJSON(t)) }
            return .object(["templates": .array(out)])
        case "template.get":
            try p.expect(only: ["name", "tag"])
            return await templateJSON(try await engine.resolveTemplate(try Self.templateRef(p).joined(separator: ":"), caller: caller))
        case "template.delete":
            try p.expect(only: ["name", "tag", "force"])
            let ref = try Self.templateRef(p)
            let t = try await engine.deleteTemplate(name: ref[0], tag: ref[1], force: try p.bool("force") ?? false, caller: caller)
            return .object(["deleted": await templateJSON(t)])
        default:
            throw SandpitError(.methodNotFound, "method not found: \(req.method)", details: ["method": .string(req.method)])
        }
    }

    /// `name` (`NAME` or `NAME:TAG`) and `tag?` as [name, tag].
    static func templateRef(_ p: Params) throws(SandpitError) -> [String] {
        let name = try p.requireString("name")
        if let tag = try p.string("tag") {
            guard !name.contains(":") else { throw SandpitError.invalidParams("tag", "give the tag in name or in tag, not both") }
            let r = try TemplateRef.parse(name + ":" + tag, field: "name")
            return [r.name, r.tag]
        }
        let r = try TemplateRef.parse(name, field: "name")
        return [r.name, r.tag]
    }

    func templateJSON(_ t: TemplateRecord) async -> JSONValue {
        var o: JSONObject = ["name": .string(t.name), "tag": .string(t.tag), "templateId": .string(t.templateId),
                             "createdAt": .string(Timestamp.iso8601(ms: t.createdAt)), "bytes": .int(t.bytes)]
        o["layers"] = .array(((try? await engine.layers(of: t)) ?? []).map(\.json))
        o["config"] = t.config.json
        if let parent = t.parent { o["parent"] = .string(parent) }
        if t.isBuiltin { o["builtin"] = true }
        o["shared"] = .bool(t.owner == TemplateRecord.shared)
        if t.owner != TemplateRecord.shared { o["owner"] = .int(t.owner) }
        return .object(o)
    }

    /// `template.build`: progress goes out as `template.progress`
    /// notifications, in order, before the result.
    func templateBuild(_ p: Params, requestId: JSONValue, caller: Caller, out: any RPCOutbound) async throws -> JSONValue {
        try p.expect(only: ["name", "tag", "spec", "file", "context", "policy"])
        let ref = try Self.templateRef(p)
        var spec = try p.string("spec")
        var context = try p.string("context")
        if let file = try p.string("file") {
            guard spec == nil else { throw SandpitError.invalidParams("file", "give spec or file, not both") }
            guard file.hasPrefix("/"), !file.utf8.contains(0) else { throw SandpitError.invalidParams("file", "must be an absolute path on the daemon's host") }
            guard caller.admin else { throw SandpitError(.permissionDenied, "reading a spec file from the host needs an admin client") }
            do { spec = try FS.readText(file) } catch {
                throw SandpitError(.notFound, "cannot read spec file \(file): \(error)", details: ["path": .string(file)])
            }
            if context == nil { context = String(file[..<(file.lastIndex(of: "/") ?? file.startIndex)]) }
            if context == "" { context = "/" }
        }
        guard let spec else { throw SandpitError.invalidParams("spec", "one of spec or file is required") }
        if let c = context, !c.hasPrefix("/") || c.utf8.contains(0) { throw SandpitError.invalidParams("context", "must be an absolute path on the daemon's host") }
        let (stream, cont) = AsyncStream.makeStream(of: BuildEvent.self)
        let sender = Task {
            for await e in stream {
                var o: JSONObject = ["requestId": requestId, "step": .int(Int64(e.step)), "total": .int(Int64(e.total)), "message": .string(e.message)]
                if let c = e.cached { o["cached"] = .bool(c) }
                if let l = e.layer { o["layer"] = .string(l) }
                if let b = e.bytesDone { o["bytesDone"] = .int(b) }
                if let b = e.bytesTotal { o["bytesTotal"] = .int(b) }
                if let s = e.stream, let d = e.data {
                    let (data, enc) = OutputChunk(seq: 0, stream: s, bytes: d).wireFields()
                    o["stream"] = .string(s.rawValue)
                    o["data"] = .string(data)
                    if let enc { o["encoding"] = .string(enc) }
                }
                try? await out.send(RPC.notification("template.progress", .object(o)))
            }
        }
        let result: Result<TemplateRecord, Error>
        do {
            result = .success(try await engine.buildTemplate(
                BuildRequest(name: ref[0], tag: ref[1], spec: spec, context: context, policy: try p.string("policy") ?? "build"),
                caller: caller) { cont.yield($0) })
        } catch { result = .failure(error) }
        cont.finish()
        await sender.value
        return await templateJSON(try result.get())
    }

    /// Measures how long a request waited for admission.
    final class Queued: Sendable {
        let since = Mutex<UInt64?>(nil)
        func start() { since.withLock { $0 = Clock.monotonicNs() } }
        var us: Int64 { since.withLock { s in s.map { Int64((Clock.monotonicNs() - $0) / 1000) } ?? 0 } }
    }

    /// The admission ticket for a request: its client, its `queueTimeoutMs`,
    /// and a `queued` notification with its place when it has to wait.
    func ticket(_ p: Params, peer: Peer, requestId: JSONValue, out: any RPCOutbound, waitingFor: String, queued: Queued? = nil) throws(SandpitError) -> AdmissionTicket {
        let deadline = try p.int("queueTimeoutMs", min: 0, max: 24 * 3_600_000).map { Int($0) }
        return AdmissionTicket(client: peer.connection, deadlineMs: deadline) { position in
            queued?.start()
            try? await out.send(RPC.notification("queued", .object([
                "requestId": requestId, "position": .int(Int64(position)), "waitingFor": .string(waitingFor),
            ])))
        }
    }

    /// Releases the sandboxes a closed connection held awake.
    /// Ties a new sandbox's life to the connection that made it. A connection
    /// already gone (the client died while the sandbox was made) deletes it at once.
    func tie(_ id: String, to peer: Peer) async throws {
        let live = peer.owned.withLock { o -> Bool in
            guard !peer.gone.load(ordering: .acquiring) else { return false }
            o.insert(id)
            return true
        }
        if !live {
            try? await engine.delete(id, caller: peer.caller, reason: "its connection closed")
            throw SandpitError(.unavailable, "the connection closed while the sandbox was made; it was deleted")
        }
    }

    public func disconnected(_ peer: Peer) {
        let owned = peer.owned.withLock { o -> Set<String> in
            peer.gone.store(true, ordering: .releasing)
            defer { o = [] }
            return o
        }
        if !owned.isEmpty {
            let engine = engine, caller = peer.caller, logger = logger
            Task {
                for id in owned {
                    do { try await engine.delete(id, caller: caller, reason: "its connection closed (deleteOnDisconnect)") } catch let e as SandpitError where e.code == .notFound {
                    } catch { logger.warning("could not delete a sandbox after its connection closed", metadata: ["sandbox": "\(id)", "error": "\(error)"]) }
                }
            }
        }
        let held = peer.holds.withLock { h -> Set<String> in defer { h = [] }; return h }
        for id in held { engine.release(id) }
        stopWatching(peer)
        let watches = peer.fileWatches.withLock { w -> [String: String] in defer { w = [:] }; return w }
        for (watchId, sid) in watches { _ = try? engine.unwatchFiles(sid, watchId: watchId, caller: peer.caller) }
        let uploads = peer.uploads.withLock { u -> Set<String> in defer { u = [] }; return u }
        if !uploads.isEmpty {
            let engine = engine, caller = peer.caller
            Task { for id in uploads { await engine.abortUpload(id, caller: caller) } }
        }
    }

    /// Whether a `sandbox.watch` of this connection covers a sandbox.
    static func watches(_ peer: Peer, _ sandboxId: String, owner: Int64) -> Bool {
        let (ids, c) = (peer.watch.withLock { $0.ids }, peer.caller)
        return (c.admin || owner == c.uid) && (ids.isEmpty || ids.contains(sandboxId))
    }

    func stopWatching(_ peer: Peer) {
        let (t, pt) = peer.watch.withLock { w -> (Int64?, Int64?) in defer { w = (nil, nil, []) }; return (w.token, w.portToken) }
        if let t { engine.unobserve(t) }
        if let pt { engine.unobservePorts(pt) }
    }

    func withWake(_ v: JSONValue, _ w: Wake?) -> JSONValue {
        guard let w, case .object(var o) = v else { return v }
        o["wake"] = w.json
        return .object(o)
    }

    static func checkpointRef(_ p: Params, required: Bool) throws(SandpitError) -> (Int?, String?) {
        let step = try p.int("step", min: 0).map { Int($0) }
        let ck = try p.string("checkpointId")
        if step != nil && ck != nil { throw SandpitError.invalidParams("step", "give step or checkpointId, not both") }
        if required && step == nil && ck == nil { throw SandpitError.invalidParams("checkpointId", "one of checkpointId or step is required") }
        if let c = ck, !Identifier.isValid(c, prefix: "ck") { throw SandpitError.notFound("Checkpoint", c) }
        return (step, ck)
    }

    /// A sandbox as on the wire, plus its effective `limits`, idle time and
    /// memory in use while it is live.
    func sandboxJSON(_ r: SandboxRecord, caller: Caller) -> JSONValue {
        guard case .object(var o) = r.json else { return r.json }
        if let live = engine.liveStats(r.id) {
            o["idleMs"] = .int(live.idleMs)
            o["memoryBytes"] = .int(live.memoryBytes)
        }
        if r.state != .deleted {
            o["deleteAt"] = engine.deleteAt(r.id).map { .string(Timestamp.iso8601(ms: $0)) } ?? .null
        }
        if let plan = try? engine.livePlan(r.id, caller: caller), case .object(var limits) = plan.policy.json {
            for k in ["name", "description", "purpose"] { limits[k] = nil }
            o["limits"] = .object(limits)
        }
        return .object(o)
    }

    func info(_ caller: Caller) async -> JSONValue {
        let known: [TemplateRecord] = (try? await engine.templates(name: nil, caller: caller)) ?? [TemplateRecord.builtin]
        let templates: [JSONValue] = known.map { .string($0.displayName) }
        guard caller.admin else {
            // Another tenant of the daemon: its own figures, nothing of the host's paths or the daemon's totals.
            return .object([
                "version": .string(Engine.version), "backend": "linux-namespaces", "cgroup": .string(engine.cgroupVersion.rawValue),
                "rootless": .bool(Rootless.active),
                "limits": .object(["maxLineBytes": .int(Int64(limits.maxLineBytes)), "maxStdinBytes": .int(Int64(limits.maxStdinBytes)),
                                   "maxJsonDepth": .int(Int64(JSONCodec.defaultMaxDepth))]),
                "storage": .object(["mode": .string(engine.storage.mode.rawValue)]),
                "sandboxes": engine.usage(of: caller.uid)["sandboxes"] ?? 0,
                "usage": engine.usage(of: caller.uid),
                "policies": .array(engine.policies.policies.keys.sorted().map { .string($0) }),
                "templates": .array(templates),
                "methods": .array(Self.methods.map { .string($0) }),
                "caller": .object(["uid": .int(caller.uid), "admin": false]),
            ])
        }
        return .object([
            "version": .string(Engine.version),
            "backend": "linux-namespaces",
            "cgroup": .string(engine.cgroupVersion.rawValue),
            "rootless": .bool(Rootless.active),
            "limits": .object([
                "maxLineBytes": .int(Int64(limits.maxLineBytes)),
                "maxStdinBytes": .int(Int64(limits.maxStdinBytes)),
                "maxSandboxes": .int(Int64(engine.config.maxSandboxes)),
                "maxJsonDepth": .int(Int64(JSONCodec.defaultMaxDepth)),
            ]),
            "storage": .object(["mode": .string(engine.storage.mode.rawValue), "root": .string(engine.storage.root)]),
            "dataDir": .string(engine.config.dataDir),
            "sandboxes": .int(Int64(engine.liveCount)),
            "usage": engine.usageJSON,
            "warmPool": .object(["target": .int(Int64(engine.config.warmPool)), "ready": .int(Int64(engine.warmCount)),
                                 "policy": .string(engine.config.warmPolicy),
                                 "templates": .int(Int64(engine.warmTemplateCount)),
                                 "zygotes": .int(Int64(engine.zygoteCount))]),
            "agentRssBytes": .int(Int64(engine.agentRssBytes)),
            "host": engine.hostReport,
            "agent": .string(engine.config.agentPath),
            "policies": .array(engine.policies.policies.keys.sorted().map { .string($0) }),
            "templates": .array(templates),
            "methods": .array(Self.methods.map { .string($0) }),
            "caller": .object(["uid": .int(caller.uid), "admin": .bool(caller.admin)]),
            "seccomp": .object(["arch": .string(engine.hostFacts.seccompArch), "rules": .int(Int64(engine.hostFacts.seccompRules))]),
        ])
    }

    func execRun(_ p: Params, requestId: JSONValue, peer: Peer, out: any RPCOutbound) async throws -> JSONValue {
        let caller = peer.caller
        let received = Clock.monotonicNs()
        try p.expect(only: ["sandboxId", "cmd", "shell", "env", "cwd", "user", "stdin", "stdinBase64", "timeoutMs", "background", "queueTimeoutMs",
                            "pty", "yieldMs", "maxOutputBytes"])
        let id = try p.requireString("sandboxId")
        let cmd = try p.stringArray("cmd")
        let shell = try p.string("shell")
        let argv: [String]
        switch (cmd, shell) {
        case (let c?, nil):
            guard !c.isEmpty, !c[0].isEmpty else { throw SandpitError.invalidParams("cmd", "must name a program") }
            argv = c
        case (nil, let s?): argv = ["/bin/bash", "-c", s]
        case (nil, nil): throw SandpitError.invalidParams("cmd", "one of cmd or shell is required")
        default: throw SandpitError.invalidParams("shell", "give cmd or shell, not both")
        }
        for (i, a) in argv.enumerated() where a.utf8.contains(0) { throw SandpitError.invalidParams("cmd[\(i)]", "contains a NUL byte") }
        let env = try p.stringMap("env") ?? [:]
        for (k, v) in env {
            if k.isEmpty || k.contains("=") || k.utf8.contains(0) { throw SandpitError.invalidParams("env.\(k)", "invalid variable name") }
            if v.utf8.contains(0) { throw SandpitError.invalidParams("env.\(k)", "contains a NUL byte") }
        }
        let cwd = try p.string("cwd")
        if let c = cwd, !c.hasPrefix("/") || c.utf8.contains(0) { throw SandpitError.invalidParams("cwd", "must be an absolute path") }
        var stdin: [UInt8]?
        // `stdin: "pipe"` keeps stdin open for exec.input; any other string is the input itself.
        let pipe = try p.string("stdin") == "pipe"
        if !pipe, let s = try p.string("stdin") { stdin = Array(s.utf8) }
        if let b = try p.string("stdinBase64") {
            guard stdin == nil else { throw SandpitError.invalidParams("stdinBase64", "give stdin or stdinBase64, not both") }
            guard let bytes = Base64.decode(b) else { throw SandpitError.invalidParams("stdinBase64", "not valid base64") }
            stdin = bytes
        }
        if let s = stdin, s.count > limits.maxStdinBytes {
            throw SandpitError(.limitExceeded, "stdin is \(s.count) bytes; the limit is \(limits.maxStdinBytes)", details: ["field": "stdin"])
        }
        let timeout = try p.int("timeoutMs", min: 1, max: 7 * 24 * 3_600_000).map { Int($0) }
        let background = try p.bool("background") ?? false
        var pty: (rows: Int, cols: Int)?
        if let t = try p.object("pty") {
            try t.expect(only: ["rows", "cols"])
            pty = (Int(try t.int("rows", min: 1, max: 1000) ?? 24), Int(try t.int("cols", min: 1, max: 1000) ?? 80))
        }
        let yieldMs = try p.int("yieldMs", min: 0, max: 3_600_000).map { Int($0) }
        let maxOutput = try p.int("maxOutputBytes", min: 64, max: 64 << 20).map { Int($0) }
        if yieldMs != nil && background { throw SandpitError.invalidParams("yieldMs", "give yieldMs or background, not both") }
        let user = try p.string("user")
        guard user == nil || user == "root" || user == "user" else {
            throw SandpitError.invalidParams("user", "\"root\" (the sandbox's root, with a container root's capabilities) or \"user\" (the template's user, the default)")
        }

        var req = ExecRequest(argv: argv, env: env, cwd: cwd, stdin: stdin, timeoutMs: timeout, receivedNs: received)
        req.asRoot = user == "root"
        req.stdinPipe = pipe
        req.pty = pty
        let session = try await engine.exec(id, req, caller: caller, awaitStart: background || yieldMs != nil,
                                              admit: try ticket(p, peer: peer, requestId: requestId, out: out, waitingFor: "exec"))
        if let yieldMs { return try await collect(session, since: 0, yieldMs: yieldMs, maxOutputBytes: maxOutput) }
        if background {
            return .object(["execId": .string(session.execId), "state": .string(session.isFinished ? "exited" : "running"), "background": true])
        }
        return try await stream(session, since: 0, requestId: requestId, out: out)
    }

    /// Sends an exec's output from `since` as `exec.output` notifications
    /// until it ends, then its result. Input typed into a terminal is in the
    /// log (for `exec.logs`), not echoed here: the terminal echoes it.
    func stream(_ session: ExecSession, since: Int, requestId: JSONValue, out: any RPCOutbound) async throws -> JSONValue {
        var last = since - 1
        while true {
            let (chunks, outcome) = try await session.nextCancellable(after: last)
            for c in chunks {
                last = c.seq
                if c.stream == .stdin { continue }
                let (data, enc) = c.wireFields()
                var o: JSONObject = ["requestId": requestId, "execId": .string(session.execId), "stream": .string(c.stream.rawValue), "data": .string(data)]
                if let enc { o["encoding"] = .string(enc) }
                o["seq"] = .int(Int64(c.seq))
                try await out.send(RPC.notification("exec.output", .object(o)))
            }
            if let outcome {
                let rec = await session.waitRecorded()
                return withWake(Self.resultJSON(session.execId, outcome, step: rec), session.wake)
            }
        }
    }

    static func execJSON(_ r: ExecRecord) -> JSONValue {
        .object([
            "execId": .string(r.execId), "command": .array(r.command.map { .string($0) }), "state": .string(r.state.rawValue),
            "exitCode": r.exitCode.map { .int(Int64($0)) } ?? .null, "signal": r.signal.map { .string(Signals.name(Int32($0))) } ?? .null,
            "timedOut": .bool(r.timedOut), "startedAt": .string(Timestamp.iso8601(ms: r.startedAt)),
            "endedAt": r.endedAt.map { .string(Timestamp.iso8601(ms: $0)) } ?? .null,
            "stdoutBytes": .int(r.stdoutBytes), "stderrBytes": .int(r.stderrBytes),
        ])
    }

    /// A yield-style answer (`exec.run` with `yieldMs`, `exec.wait`): the
    /// output from `since` on, gathered until the exec ends or `yieldMs` pass,
    /// whichever is first. Running: `{execId, running: true, chunks, nextSeq}`;
    /// ended: the exec result plus `running: false`, `chunks`, `nextSeq`. With
    /// `maxOutputBytes` the answer keeps the head and tail of the output and
    /// says how much it left out (`omittedBytes`; `exec.logs` has it all).
    func collect(_ s: ExecSession, since: Int, yieldMs: Int?, maxOutputBytes: Int?) async throws -> JSONValue {
        let deadline = yieldMs.map { ContinuousClock.now + .milliseconds($0) }
        var chunks: [OutputChunk] = []
        var last = since - 1
        var outcome: ExecOutcome?
        while outcome == nil {
            if let d = deadline, ContinuousClock.now >= d { break }
            let next: (chunks: [OutputChunk], outcome: ExecOutcome?)? = try await withThrowingTaskGroup(of: (chunks: [OutputChunk], outcome: ExecOutcome?)?.self) { g in
                g.addTask { [last] in try await s.nextCancellable(after: last) }
                if let d = deadline { g.addTask { try await Task.sleep(until: d); return nil } }
                defer { g.cancelAll() }
                return try await g.next()!
            }
            guard let next else { break }
            chunks += next.chunks
            last = next.chunks.last?.seq ?? last
            outcome = next.outcome
        }
        var shown = chunks
        var omitted = 0
        if let max = maxOutputBytes { (shown, omitted) = OutputChunk.headAndTail(chunks, maxBytes: max) }
        var o: JSONObject
        if let outcome, case .object(let r) = Self.resultJSON(s.execId, outcome, step: await s.waitRecorded()) {
            o = r
            o["running"] = false
        } else {
            o = ["execId": .string(s.execId), "running": true]
        }
        o["chunks"] = .array(shown.map(Self.chunkJSON))
        o["nextSeq"] = .int(Int64(last + 1))
        if omitted > 0 { o["omittedBytes"] = .int(Int64(omitted)) }
        return .object(o)
    }

    static func chunkJSON(_ c: OutputChunk) -> JSONValue {
        let (data, enc) = c.wireFields()
        var o: JSONObject = ["seq": .int(Int64(c.seq)), "stream": .string(c.stream.rawValue), "data": .string(data)]
        if let enc { o["encoding"] = .string(enc) }
        return .object(o)
    }

    public static func resultJSON(_ execId: String, _ o: ExecOutcome, step: ExecSession.StepRecord? = nil) -> JSONValue {
        var r: JSONObject = ["execId": .string(execId), "exitCode": .int(Int64(o.exitCode))]
        if let s = o.signal { r["signal"] = .string(Signals.name(s)) }
        r["timedOut"] = .bool(o.timedOut)
        r["oomKilled"] = .bool(o.oomKilled)
        r["durationMs"] = .double((o.durationMs * 1000).rounded() / 1000)
        r["stdoutBytes"] = .int(o.stdoutBytes)
        r["stderrBytes"] = .int(o.stderrBytes)
        r["truncated"] = .bool(o.truncated)
        r["timings"] = .object(["queueUs": .int(o.timings.queueUs), "spawnUs": .int(o.timings.spawnUs), "runUs": .int(o.timings.runUs)])
        if let e = o.spawnError { r["spawnError"] = .string(e) }
        if let k = o.killedBy { r["killedBy"] = .string(k) }
        if let step {
            put(step, into: &r)
            if step.checkpoint != nil, case .object(var t) = r["timings"] {
                t["checkpointUs"] = .int(step.checkpointUs)
                r["timings"] = .object(t)
            }
        }
        return .object(r)
    }

    /// The step a command or cell became, and its checkpoint (or why there is none).
    static func put(_ step: ExecSession.StepRecord, into r: inout JSONObject) {
        r["step"] = .int(Int64(step.step))
        if let c = step.checkpoint {
            r["checkpoint"] = .object(["step": .int(Int64(c.step)), "checkpointId": .string(c.id), "diff": c.diff.json, "bytes": .int(c.bytes)])
        } else if let e = step.checkpointError {
            r["checkpoint"] = .null
            r["checkpointError"] = .string(e)
        }
    }
}

extension ExecSession {
    /// `next(after:)` that gives up with CancellationError when the request is cancelled.
    func nextCancellable(after: Int) async throws -> (chunks: [OutputChunk], outcome: ExecOutcome?) {
        try Task.checkCancellation()
        let r = await withTaskCancellationHandler {
            await next(after: after, untilCancelled: true)
        } onCancel: {
            self.wakeAll()
        }
        try Task.checkCancellation()
        return r
    }
}

public enum Signals {
    static let names: [(String, Int32)] = [
        ("SIGHUP", SIGHUP), ("SIGINT", SIGINT), ("SIGQUIT", SIGQUIT), ("SIGILL", SIGILL), ("SIGTRAP", SIGTRAP),
        ("SIGABRT", SIGABRT), ("SIGBUS", SIGBUS), ("SIGFPE", SIGFPE), ("SIGKILL", SIGKILL), ("SIGUSR1", SIGUSR1),
        ("SIGSEGV", SIGSEGV), ("SIGUSR2", SIGUSR2), ("SIGPIPE", SIGPIPE), ("SIGALRM", SIGALRM), ("SIGTERM", SIGTERM),
        ("SIGCHLD", SIGCHLD), ("SIGCONT", SIGCONT), ("SIGSTOP", SIGSTOP), ("SIGTSTP", SIGTSTP), ("SIGXCPU", SIGXCPU),
        ("SIGXFSZ", SIGXFSZ), ("SIGSYS", SIGSYS),
    ]

    public static func name(_ s: Int32) -> String { names.first { $0.1 == s }?.0 ?? "SIG\(s)" }
    /// The number of a signal named as `name` gives it ("SIGKILL" → 9).
    public static func number(_ name: String) -> Int32? { names.first { $0.0 == name }?.1 }

    /// Accepts "SIGTERM", "TERM" or a number 1…64.
    static func parse(_ v: JSONValue?) throws(SandpitError) -> Int32? {
        guard let v, v != .null else { return nil }
        if let i = v.intValue, (1...64).contains(i) { return Int32(i) }
        if let s = v.stringValue {
            let up = s.uppercased()
            let full = up.hasPrefix("SIG") ? up : "SIG" + up
            if let n = names.first(where: { $0.0 == full }) { return n.1 }
        }
        throw SandpitError.invalidParams("signal", "expected a signal name like \"SIGTERM\" or a number 1-64")
    }
}
