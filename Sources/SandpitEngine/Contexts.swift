#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import SandpitCore
import SandpitOS
import Synchronization

/// What one cell did.
public struct CellResult: Sendable {
    public var contextId: String
    public var executionCount: Int
    /// MIME bundles (Python): what the cell passed to `display()`, the last
    /// expression, then each figure.
    public var results: [JSONValue]
    /// Which of `results` is the last expression's value (nil: none).
    public var mainResult: Int?
    public var error: JSONObject?
    /// Bash: the cell's exit status.
    public var exitCode: Int?
    /// The interpreter was started fresh for this cell because the previous one died.
    public var restarted: Bool
    public var restartReason: String?
    public var timedOut: Bool
    public var durationMs: Double
    public var step: ExecSession.StepRecord?
}

/// A long-lived interpreter in a sandbox: a driver process (an exec the
/// daemon owns) fed cells on its stdin. Its stdout and stderr carry the
/// cell's output as it is written, with the driver's frames between
/// (`DriverFrames`): records (Python) or an end marker (bash).
final class InterpreterContext: Sendable {
    let id: String
    let language: String
    let session: ExecSession
    /// One cell at a time.
    let cells = StepLock()
    /// Frozen copies to keep (Python with `interpreterSnapshots` > 0; else 0):
    /// the most recently made or restored.
    let keepCopies: Int
    /// Kills a frozen copy the context no longer keeps (by its pid in the sandbox).
    let evict: @Sendable (Int32) -> Void
    /// Hands out copy serials, unique in the runtime.
    let nextSerial: @Sendable () -> Int

    /// A frozen copy of the interpreter: its state after cell `n`.
    struct Copy: Sendable {
        let serial: Int
        let n: Int
        var pid: Int32?
    }

    struct Pending {
        var onOutput: @Sendable (OutputStream, [UInt8]) -> Void
        var continuation: CheckedContinuation<Outcome, Error>?
        /// The driver's end of the cell on each stream (Python: the result on
        /// stdout, an end record on stderr): all output came before it.
        var stdoutDone = false
        var stderrDone = false
        var outcome = Outcome()
    }

    /// What the driver said about a cell.
    struct Outcome: Sendable {
        var results: [JSONValue] = []
        var mainResult: Int?
        var error: JSONObject?
        var exitCode: Int?
    }

    /// A record longer than this is dropped, and its cell fails.
    static let maxRecordBytes = 64 << 20

    struct State {
        var executionCount = 0
        var pending: Pending?
        var stdoutFrames: DriverFrames
        var stderrFrames: DriverFrames
        /// The pieces of a stdout record that spans several frames.
        var record: [UInt8] = []
        var recordTooLarge = false
        var ready = false
        var readyWaiter: CheckedContinuation<Void, Error>?
        var dead: String?
        /// What the driver wrote to stderr while no cell ran (start-up errors), for the message when it dies.
        var driverErrors: [UInt8] = []
        /// The driver's wake signal (from its first `ready`).
        var wakeSignal: Int32?
        /// Frozen copies, oldest first.
        var copies: [Copy] = []
        /// The copy that holds the state after the last finished cell.
        var current: Int?
        /// The copy being woken by an in-place restore.
        var waking: Int?
        var copyWaiters: [CheckedContinuation<Void, Never>] = []
        /// A zygote's driver: the request for a copy in a new sandbox, waiting for its "n" record.
        var nestWaiter: CheckedContinuation<JSONObject, Error>?
        var nestId: JSONValue?
    }
    let state: Mutex<State>

    /// A context in `rt`: it keeps the copies `rt`'s policy asks for, and evicts them through `rt`'s agent.
    convenience init(id: String, language: String, session: ExecSession, nonce: String, in rt: SandboxRuntime) {
        self.init(id: id, language: language, session: session, nonce: nonce, keepCopies: Self.copiesKept(language: language, in: rt),
                  evict: { [weak rt] pid in rt?.signal(pid: pid, SIGKILL) },
                  nextSerial: { [weak rt] in rt?.copySerials.add(1, ordering: .relaxed).newValue ?? 0 })
    }

    /// Frozen copies a context of `language` keeps in `rt`: only Python's, and only
    /// where a restore can bring the files back with them (a disk and checkpoints).
    static func copiesKept(language: String, in rt: SandboxRuntime) -> Int {
        language == "python" && rt.disk != nil && rt.policy.checkpoints != .off ? Int(rt.policy.interpreterSnapshots) : 0
    }

    init(id: String, language: String, session: ExecSession, nonce: String, keepCopies: Int = 0,
         evict: @escaping @Sendable (Int32) -> Void = { _ in }, nextSerial: @escaping @Sendable () -> Int = { 0 }) {
        self.id = id
        self.language = language
        self.session = session
        self.state = Mutex(State(stdoutFrames: DriverFrames(nonce: nonce), stderrFrames: DriverFrames(nonce: nonce)))
        self.keepCopies = keepCopies
        self.evict = evict
        self.nextSerial = nextSerial
    }

    /// The copy with this serial, once its pid is known (waits up to 2 s for
    /// the driver's report, which follows the cell's result).
    func copy(serial: Int) async -> Copy? {
        let deadline = Clock.monotonicNs() + 2_000_000_000
        while true {
            let (c, dead) = state.withLock { s in (s.copies.first { $0.serial == serial }, s.dead != nil) }
            guard let c, !dead else { return nil }
            if c.pid != nil { return c }
            if Clock.monotonicNs() > deadline { return nil }
            await withCheckedContinuation { (w: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.dead != nil || s.copies.first(where: { $0.serial == serial })?.pid != nil { return true }
                    s.copyWaiters.append(w)
                    return false
                }
                if ready { w.resume() }
            }
        }
    }

    /// The pids of every frozen copy whose pid is known.
    var copyPids: [Int32] { state.withLock { $0.copies.compactMap(\.pid) } }

    /// Fails the running cell, if any, because the sandbox is being restored:
    /// its interpreter is about to be replaced. The context stays usable.
    func cancelCell(_ reason: String) {
        let p = state.withLock { s -> Pending? in defer { s.pending = nil }; return s.pending }
        p?.continuation?.resume(throwing: CellCancelled(reason: reason))
    }

    /// Wakes the copy `serial` (after the agent has killed everything else
    /// and the files are back) and waits until it says it is the interpreter.
    func wake(_ copy: Copy, rt: SandboxRuntime) async throws {
        guard let pid = copy.pid, let sig = state.withLock({ s -> Int32? in
            s.ready = false
            s.waking = copy.serial
            // Whatever the stopped interpreter left half written is not the copy's.
            s.stdoutFrames.reset()
            s.stderrFrames.reset()
            s.record = []
            s.recordTooLarge = false
            return s.wakeSignal
        }) else { throw SandpitError(.sandboxFailed, "the interpreter's copy cannot be woken") }
        rt.signal(pid: pid, sig)
        try await withDeadline(seconds: 10, "the interpreter's frozen copy did not wake within 10 s") { try await self.waitReady() }
    }

    private func dropCopies() {
        let (pids, waiters) = state.withLock { s -> ([Int32], [CheckedContinuation<Void, Never>]) in
            defer { s.copies = []; s.current = nil; s.copyWaiters = [] }
            return (s.copies.compactMap(\.pid), s.copyWaiters)
        }
        for p in pids { evict(p) }
        for w in waiters { w.resume() }
    }

    var isDead: Bool { state.withLock { $0.dead != nil } }

    /// Reads the driver's output until it exits.
    func pump() async {
        var last = -1
        while true {
            let (chunks, outcome) = await session.next(after: last)
            for c in chunks {
                last = c.seq
                consume(c)
            }
            session.consumed(through: last)
            if let o = outcome {
                let why = o.signal.map { "was killed by signal \($0)" } ?? "exited with status \(o.exitCode)"
                let errors = state.withLock { String(decoding: $0.driverErrors.suffix(2000), as: UTF8.self) }
                die("the \(language) interpreter \(why)" + (o.oomKilled ? " (out of memory)" : "") + (errors.isEmpty ? "" : ": \(errors)"))
                return
            }
        }
    }

    func die(_ reason: String) {
        let (p, r, n) = state.withLock { s -> (Pending?, CheckedContinuation<Void, Error>?, CheckedContinuation<JSONObject, Error>?) in
            s.dead = s.dead ?? reason
            defer { s.pending = nil; s.readyWaiter = nil; s.nestWaiter = nil }
            return (s.pending, s.readyWaiter, s.nestWaiter)
        }
        p?.continuation?.resume(throwing: SandpitError(.sandboxFailed, reason))
        r?.resume(throwing: SandpitError(.sandboxFailed, reason))
        n?.resume(throwing: SandpitError(.sandboxFailed, reason))
        dropCopies()
    }

    func waitReady() async throws {
        if language == "bash" { return }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            let now = state.withLock { s -> Result<Bool, SandpitError> in
                if let d = s.dead { return .failure(SandpitError(.sandboxFailed, d)) }
                if s.ready { return .success(true) }
                s.readyWaiter = c
                return .success(false)
            }
            switch now {
            case .success(true): c.resume()
            case .success(false): break
            case .failure(let e): c.resume(throwing: e)
            }
        }
    }

    // MARK: The driver's output: the user's bytes and the driver's frames

    /// Passes a cell's output on (or keeps what the driver says while no cell runs).
    private func deliver(_ stream: OutputStream, _ bytes: [UInt8]) {
        let sink = state.withLock { s -> (@Sendable (OutputStream, [UInt8]) -> Void)? in
            if s.pending == nil, stream == .stderr { s.driverErrors = Array((s.driverErrors + bytes).suffix(4096)) }
            return s.pending?.onOutput
        }
        sink?(stream, bytes)
    }

    /// Updates the running cell; once the driver has ended it on both streams, returns it.
    private func settle(_ update: (inout Pending) -> Void) {
        let done = state.withLock { s -> Pending? in
            guard var p = s.pending else { return nil }
            update(&p)
            s.pending = p.stdoutDone && p.stderrDone ? nil : p
            return s.pending == nil ? p : nil
        }
        if let p = done { p.continuation?.resume(returning: p.outcome) }
    }

    /// Splits a chunk of the driver's output into the user's bytes, passed on
    /// in order, and the driver's frames, read by language.
    private func consume(_ c: OutputChunk) {
        let pieces = state.withLock { s in c.stream == .stdout ? s.stdoutFrames.feed(c.bytes) : s.stderrFrames.feed(c.bytes) }
        for piece in pieces {
            switch piece {
            case .output(let bytes):
                deliver(c.stream, bytes)
            case .frame(let body):
                if language == "bash" { bashMarker(body, stream: c.stream) }
                else if let rec = record(body, stream: c.stream) { pythonRecord(rec, stream: c.stream) }
            }
        }
    }

    /// A whole record from a frame's body, `KIND:JSON`: "=" a whole record; "[", "+", "]" the
    /// pieces of a longer one (stdout only). A record past `maxRecordBytes` becomes a
    /// `ResultTooLarge` result.
    private func record(_ body: [UInt8], stream: OutputStream) -> JSONObject? {
        guard body.count >= 2, body[1] == UInt8(ascii: ":") else { return nil }
        let kind = body[0], text = body[2...]
        if kind == UInt8(ascii: "=") {
            if stream == .stdout { state.withLock { $0.record = []; $0.recordTooLarge = false } }
            return (try? JSONCodec.parse(Array(text), maxDepth: 256))?.objectValue
        }
        guard stream == .stdout else { return nil }
        let done = state.withLock { s -> (bytes: [UInt8], tooLarge: Bool)? in
            if kind == UInt8(ascii: "[") { s.record = []; s.recordTooLarge = false }
            if s.record.count + text.count > Self.maxRecordBytes { s.record = []; s.recordTooLarge = true }
            if !s.recordTooLarge { s.record += text }
            guard kind == UInt8(ascii: "]") else { return nil }
            defer { s.record = []; s.recordTooLarge = false }
            return (s.record, s.recordTooLarge)
        }
        guard let done else { return nil }
        if done.tooLarge {
            return ["t": "r", "results": [], "error": ["name": "ResultTooLarge", "value": .string("the cell's results are larger than \(Self.maxRecordBytes >> 20) MiB"),
                                                       "traceback": "The cell's results (its last value and figures) were too large to return; its output was sent."]]
        }
        return (try? JSONCodec.parse(done.bytes, maxDepth: 256))?.objectValue
    }

    private func pythonRecord(_ rec: JSONObject, stream: OutputStream) {
        // The end of a cell's stderr counts only on stderr (what came before it on that pipe is the cell's);
        // every other record only on stdout.
        guard (rec["t"]?.stringValue == "e") == (stream == .stderr) else { return }
        switch rec["t"]?.stringValue {
        case "ready":
            let w = state.withLock { s -> CheckedContinuation<Void, Error>? in
                if let sig = rec["wake"]?.intValue { s.wakeSignal = Int32(truncatingIfNeeded: sig) }
                if let n = rec["restored"]?.intValue, let serial = s.waking,
                   let i = s.copies.firstIndex(where: { $0.serial == serial }) {
                    // The woken copy is the interpreter now; the copy it left behind stands for the same
                    // step, and counts as the most recently used (eviction takes the least recently used).
                    // No copy: its fork failed, and the step has none now.
                    var copy = s.copies.remove(at: i)
                    copy.pid = rec["copy"]?.intValue.map { Int32(truncatingIfNeeded: $0) }
                    if copy.pid != nil { s.copies.append(copy) }
                    s.current = copy.pid != nil ? serial : nil
                    s.executionCount = Int(n)
                    s.waking = nil
                }
                s.ready = true
                defer { s.readyWaiter = nil }
                return s.readyWaiter
            }
            w?.resume()
        case "s":
            guard let n = rec["n"]?.intValue else { break }
            let pid = rec["pid"]?.intValue.map { Int32(truncatingIfNeeded: $0) }
            let (kept, waiters) = state.withLock { s -> (Bool, [CheckedContinuation<Void, Never>]) in
                guard let i = s.copies.lastIndex(where: { $0.n == Int(n) && $0.pid == nil }) else { return (false, []) }
                if let pid { s.copies[i].pid = pid } else { s.copies.remove(at: i) }   // no pid: the fork failed
                defer { s.copyWaiters = [] }
                return (true, s.copyWaiters)
            }
            if !kept, let pid { evict(pid) }   // already past the number kept
            for w in waiters { w.resume() }
        case "r":
            let serial = keepCopies > 0 ? nextSerial() : nil
            let evicted = state.withLock { s -> [Int32] in
                var evicted: [Int32] = []
                if let serial {
                    // The driver forks a frozen copy of this state next ("s" gives its pid).
                    s.copies.append(Copy(serial: serial, n: rec["n"]?.intValue.map { Int($0) } ?? s.executionCount, pid: nil))
                    s.current = serial
                    while s.copies.count > keepCopies {
                        if let pid = s.copies.removeFirst().pid { evicted.append(pid) }
                    }
                }
                return evicted
            }
            for pid in evicted { evict(pid) }
            settle { p in
                p.stdoutDone = true
                p.outcome.results = rec["results"]?.arrayValue ?? []
                p.outcome.mainResult = rec["main"]?.intValue.map { Int($0) }
                p.outcome.error = rec["error"]?.objectValue
            }
        case "e":
            settle { $0.stderrDone = true }
        case "n":
            // Only the answer to the request waiting now: a copy that answers after its request
            // timed out must not be taken for the next one.
            let w = state.withLock { s -> CheckedContinuation<JSONObject, Error>? in
                guard s.nestWaiter != nil, rec["id"] == s.nestId else { return nil }
                defer { s.nestWaiter = nil; s.nestId = nil }
                return s.nestWaiter
            }
            w?.resume(returning: rec)
        default:
            break
        }
    }

    // MARK: bash: an end marker "N:STATUS" on each stream

    private func bashMarker(_ body: [UInt8], stream: OutputStream) {
        let fields = String(decoding: body, as: UTF8.self).split(separator: ":")
        settle { p in
            if stream == .stdout { p.stdoutDone = true } else { p.stderrDone = true }
            if fields.count == 2 { p.outcome.exitCode = Int(fields[1]) }
        }
    }

    /// A zygote's driver: asks for a copy of the interpreter in a new sandbox
    /// and waits for the answer, `{"t":"n","pid":…}` or `{"t":"n","error":…}`.
    /// One at a time (the zygote's nest lock).
    func nest(_ request: JSONObject, rt: SandboxRuntime) async throws -> JSONObject {
        let line = Array((JSONCodec.encode(.object(["nest": .object(request)])) + "\n").utf8)
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<JSONObject, Error>) in
            let dead = state.withLock { s -> String? in
                if let d = s.dead { return d }
                s.nestWaiter = c
                s.nestId = request["id"]
                return nil
            }
            if let d = dead { c.resume(throwing: SandpitError(.sandboxFailed, d)); return }
            rt.send(type: SP_FRAME_STDIN.rawValue, id: session.numericId, payload: line)
        }
    }

    /// Sends one cell and waits for its end (or the interpreter's death).
    func run(_ code: String, rt: SandboxRuntime, onOutput: @escaping @Sendable (OutputStream, [UInt8]) -> Void)
        async throws -> (n: Int, outcome: Outcome)
    {
        let n = state.withLock { s -> Int in s.executionCount += 1; return s.executionCount }
        let payload: [UInt8]
        if language == "python" {
            payload = Array((JSONCodec.encode(.object(["n": .int(Int64(n)), "code": .string(code)])) + "\n").utf8)
        } else {
            payload = Array("\(n) \(code.utf8.count)\n".utf8) + Array(code.utf8)
        }
        let r = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Outcome, Error>) in
            let dead = state.withLock { s -> String? in
                if let d = s.dead { return d }
                s.pending = Pending(onOutput: onOutput, continuation: c)
                return nil
            }
            if let d = dead { c.resume(throwing: SandpitError(.sandboxFailed, d)); return }
            var off = 0
            while off < payload.count {
                let end = min(off + Int(SP_OUTPUT_CHUNK), payload.count)
                rt.send(type: SP_FRAME_STDIN.rawValue, id: session.numericId, payload: Array(payload[off..<end]))
                off = end
            }
        }
        return (n, r)
    }
}

extension Engine {
    /// Contexts one sandbox may have at once (the default Python one included).
    static let maxContexts = 8
    public static let defaultContextId = "default"

    /// Starts an interpreter context in a live sandbox.
    public func createContext(_ id: String, language: String, caller: Caller) async throws -> String {
        guard language == "python" || language == "bash" else {
            throw SandpitError.invalidParams("language", "\"python\" or \"bash\"")
        }
        let ctx = try await startContext(id, language: language, contextId: Identifier.make("ctx"), caller: caller)
        return ctx.id
    }

    private func startContext(_ id: String, language: String, contextId: String, caller: Caller) async throws -> InterpreterContext {
        _ = try await wake(id, caller: caller)
        let rt = try await liveRuntime(id, caller: caller)
        return try await startContext(in: rt, language: language, contextId: contextId)
    }

    /// Starts a context in a live runtime (one the registry may not hold yet: a warm template's pool).
    func startContext(in rt: SandboxRuntime, language: String, contextId: String) async throws -> InterpreterContext {
        let id = rt.id
        let live = rt.contexts.withLock { $0.values.filter { !$0.isDead }.count }
        guard live < Self.maxContexts else {
            throw SandpitError(.limitExceeded, "sandbox \(id) already has \(Self.maxContexts) interpreter contexts")
        }
        let nonce = Identifier.secret(16)
        let keep = InterpreterContext.copiesKept(language: language, in: rt)
        let preload = rt.image.config.preload
        var req = language == "python"
            ? ExecRequest(argv: ["python3", "-u", "-c", ContextDrivers.pythonBootstrap, nonce] + (keep > 0 ? ["--snapshots"] : [])
                          + (preload.isEmpty ? [] : ["--preload", preload.joined(separator: ",")]),
                          env: ["SANDPIT_DRIVER": ContextDrivers.python])
            : ExecRequest(argv: ["/bin/bash", "--norc", "--noprofile", "-c", ContextDrivers.bash, "sandpit-context", nonce])
        req.service = true
        let session = try await startExec(in: rt, req)
        if let err = session.outcome?.spawnError {
            throw SandpitError(.invalidState, "cannot start a \(language) context: \(err)" + (language == "python" ? " (the template needs python3)" : " (the template needs bash)"))
        }
        let ctx = InterpreterContext(id: contextId, language: language, session: session, nonce: nonce, in: rt)
        Task { await ctx.pump() }
        try await ctx.waitReady()
        // Two first cells racing to start the default context: one interpreter wins, the other is stopped.
        let winner = rt.contexts.withLock { m -> InterpreterContext? in
            if let e = m[contextId], !e.isDead { return e }
            m[contextId] = ctx
            return nil
        }
        if let w = winner {
            rt.signal(exec: ctx.session.numericId, SIGKILL)
            return w
        }
        return ctx
    }

    /// Runs a cell. `contextId` nil means the sandbox's default Python
    /// context, made on first use. A context whose interpreter died is
    /// started fresh, and the result says so (`restarted`).
    public func runCode(_ id: String, contextId: String?, code: String, timeoutMs: Int?, caller: Caller,
                        onOutput: @escaping @Sendable (String, OutputStream, [UInt8]) -> Void) async throws -> CellResult {
        let t0 = Clock.monotonicNs()
        _ = try await wake(id, caller: caller)
        var rt = try await liveRuntime(id, caller: caller)
        let cid = contextId ?? Self.defaultContextId
        var restarted: String?
        var ctx = rt.contexts.withLock { $0[cid] }
        if ctx == nil {
            // Contexts of an earlier runtime of this sandbox (before a hibernation or restore) restart fresh, and say so.
            let lost = lostContexts.withLock { l -> String? in
                guard let lang = l[id]?[cid] else { return nil }
                l[id]?[cid] = nil
                return lang
            }
            guard lost != nil || cid == Self.defaultContextId else { throw SandpitError.notFound("Context", cid) }
            if lost != nil { restarted = "the sandbox's processes were stopped (hibernation, restore or a daemon restart)" }
            ctx = try await startContext(id, language: lost ?? "python", contextId: cid, caller: caller)
        } else if let dead = ctx!.state.withLock({ $0.dead }) {
            restarted = dead
            ctx = try await startContext(id, language: ctx!.language, contextId: cid, caller: caller)
        }
        guard let c = ctx else { throw SandpitError.notFound("Context", cid) }
        rt = try await liveRuntime(id, caller: caller)
        let live = rt, restartReason = restarted
        try rt.checkTimeout(timeoutMs)
        let timeout = timeoutMs ?? rt.policy.execTimeoutMs.map { Int($0) }
        return try await c.cells.run { [self] in
            live.idle.withLock { $0.begin(now: Clock.nowMs()) }
            defer { live.idle.withLock { $0.end(now: Clock.nowMs()) } }
            let timedOut = Flag()
            let timer: Task<Void, Never>? = timeout.map { ms in
                Task { [weak live] in
                    do { try await Task.sleep(nanoseconds: UInt64(ms) * 1_000_000) } catch { return }
                    guard let rt = live else { return }
                    timedOut.set()
                    rt.signal(exec: c.session.numericId, SIGINT)
                    // A cell that ignores the interrupt loses its interpreter.
                    do { try await Task.sleep(nanoseconds: 3_000_000_000) } catch { return }
                    rt.signal(exec: c.session.numericId, SIGKILL)
                }
            }
            defer { timer?.cancel() }
            var result = CellResult(contextId: cid, executionCount: 0, results: [], mainResult: nil, error: nil, exitCode: nil,
                                    restarted: restartReason != nil, restartReason: restartReason, timedOut: false, durationMs: 0, step: nil)
            do {
                let r = try await c.run(code, rt: live) { stream, bytes in onOutput(cid, stream, bytes) }
                result.executionCount = r.n
                result.results = r.outcome.results
                result.mainResult = r.outcome.mainResult
                result.error = r.outcome.error
                result.exitCode = r.outcome.exitCode
            } catch let e as CellCancelled {
                // An in-place restore replaced the interpreter mid-cell: this cell is no step.
                result.executionCount = c.state.withLock { $0.executionCount }
                result.error = ["name": "SandboxRestored", "value": .string(e.reason),
                                "traceback": .string("The sandbox was restored while this cell ran (\(e.reason)); the cell was stopped and recorded no step.")]
                result.durationMs = Double(Clock.monotonicNs() - t0) / 1e6
                return result
            } catch let e as SandpitError where e.code == .sandboxFailed {
                // The interpreter died during the cell: say so; the next cell gets a fresh one.
                result.executionCount = c.state.withLock { $0.executionCount }
                result.error = ["name": "InterpreterDied", "value": .string(e.message),
                                "traceback": .string("The interpreter process ended during this cell (\(e.message)). Its state is lost; the next code.run starts a fresh one and reports restarted: true.")]
            }
            result.timedOut = timedOut.isSet
            result.step = await recordStep(live)
            result.durationMs = Double(Clock.monotonicNs() - t0) / 1e6
            return result
        }
    }


    /// Interrupts the running cell (KeyboardInterrupt in Python; SIGINT to the
    /// foreground command in bash). The context keeps its state.
    public func interrupt(_ id: String, contextId: String, caller: Caller) async throws {
        let rt = try await liveRuntime(id, caller: caller)
        guard let c = rt.contexts.withLock({ $0[contextId] }) else { throw SandpitError.notFound("Context", contextId) }
        rt.signal(exec: c.session.numericId, SIGINT)
    }

    /// A context as `context.list` shows it. `snapshots` are its frozen
    /// interpreter copies: the execution counts they hold and the memory they
    /// cost (pages private to them: what the interpreter has changed since).
    public struct ContextInfo: Sendable {
        public var id: String
        public var language: String
        public var executionCount: Int
        public var alive: Bool
        public var snapshotCounts: [Int]
        public var snapshotBytes: Int64
    }

    public func contexts(_ id: String, caller: Caller) async throws -> [ContextInfo] {
        guard let rt = try runtime(id, caller: caller), !rt.hasExited else {
            _ = try await sandbox(id, caller: caller)
            return []
        }
        let list = rt.contexts.withLock { Array($0.values) }.sorted { $0.id < $1.id }
        let all = list.flatMap { c in c.state.withLock { $0.copies.compactMap(\.pid) } }
        let bytes = all.isEmpty ? [:] : try await EngineThread.run { Self.privateBytes(rt, pids: Set(all)) }
        return list.map { c in
            let (n, copies) = c.state.withLock { s in (s.executionCount, s.copies) }
            return ContextInfo(id: c.id, language: c.language, executionCount: n, alive: !c.isDead,
                               snapshotCounts: copies.filter { $0.pid != nil }.map(\.n),
                               snapshotBytes: copies.compactMap(\.pid).reduce(0) { $0 + (bytes[$1] ?? 0) })
        }
    }

    /// Memory private to each of `pids` (pids in the sandbox's namespace):
    /// Private_Clean + Private_Dirty + Swap from smaps_rollup, found through
    /// the sandbox's cgroup and each process's NSpid.
    static func privateBytes(_ rt: SandboxRuntime, pids: Set<Int32>) -> [Int32: Int64] {
        var out: [Int32: Int64] = [:]
        for host in rt.cgroup.processes() {
            guard let ns = SandboxSpawner.nsPids(of: host)?.last, pids.contains(ns),
                  let rollup = try? FS.readText("/proc/\(host)/smaps_rollup") else { continue }
            var bytes: Int64 = 0
            for l in rollup.split(separator: "\n") where l.hasPrefix("Private_Clean:") || l.hasPrefix("Private_Dirty:") || l.hasPrefix("Swap:") {
                let f = l.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if f.count >= 2, let kb = Int64(f[1]) { bytes += kb * 1024 }
            }
            out[ns] = bytes
        }
        return out
    }

    /// Ends a context's interpreter.
    public func deleteContext(_ id: String, contextId: String, caller: Caller) async throws {
        let rt = try await liveRuntime(id, caller: caller)
        guard let c = rt.contexts.withLock({ $0.removeValue(forKey: contextId) }) else { throw SandpitError.notFound("Context", contextId) }
        rt.signal(exec: c.session.numericId, SIGKILL)
    }
}

/// A cell stopped because an in-place restore replaced its interpreter.
struct CellCancelled: Error {
    let reason: String
}

/// A one-way flag shared with a timer task.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
