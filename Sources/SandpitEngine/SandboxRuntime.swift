import CSandpit
import Foundation
import SandpitCore
import SandpitOS
import Synchronization

/// A live sandbox: its agent process, control channel, cgroup and execs.
final class SandboxRuntime: Sendable {
    let id: String
    let plan: SandboxPlan
    /// The template's layers and command defaults.
    let image: SandboxImage
    let cgroup: CgroupHandle
    let spawned: SandboxSpawner.Spawned
    /// The sandbox's own disk (a detached ext4 mount), when its policy sets one.
    /// An in-place restore replaces it (under the step lock).
    private let diskMount: Mutex<FileDescriptor?>
    var disk: FileDescriptor? { diskMount.withLock { $0 } }
    /// Installs a restored disk and returns the one it replaces.
    func replaceDisk(_ new: FileDescriptor) -> FileDescriptor? {
        diskMount.withLock { d in defer { d = new }; return d }
    }
    /// In-place restores so far: a command or cell that started before one
    /// (and was killed by it) records no step.
    let restores = Atomic<Int>(0)
    /// Serial numbers of frozen interpreter copies, unique in this runtime.
    let copySerials = Atomic<Int>(0)
    /// Which frozen interpreter copy holds each context's state as of each
    /// checkpoint (checkpoint id → context id → copy serial).
    let interpreterAt = Mutex<[String: [String: Int]]>([:])
    var policy: Policy { plan.policy }
    /// The allowlist proxy serving this sandbox, when its network mode asks for one.
    let proxy = Mutex<EgressProxy?>(nil)
    /// Ports exposed to the host (`port.expose`), by id; closed with the runtime.
    let exposures = Mutex<[String: PortExposure]>([:])
    /// Interpreter contexts (`context.create`, `code.run`), by id; their drivers die with the runtime.
    let contexts = Mutex<[String: InterpreterContext]>([:])
    /// Directory watches (`fs.watch`), by id; stopped with the runtime.
    let fileWatches = Mutex<[String: FileWatch]>([:])
    /// One step at a time: step numbers, checkpoints and restores never interleave.
    let steps = StepLock()
    /// The daemon's own writes into the sandbox's files (the file API) against
    /// a checkpoint that holds every writer without freezing the filesystem.
    let diskWriters = DiskWriterGate()
    /// The writable layer as of the head checkpoint (the base of the next diff).
    let headManifest = Mutex<Manifest?>(nil)
    /// The `bytes` of all the sandbox's checkpoints (nil until first needed), for its store quota.
    let checkpointBytes = Mutex<Int64?>(nil)
    /// The memory this sandbox was admitted with (nil: not admitted, or already released).
    let admittedMemory = Mutex<Int64?>(nil)
    /// A warm template's sandbox: the checkpoint of its files taken while it
    /// waited (after the PRELOAD imports), listed once the sandbox is handed out.
    let warmBase = Mutex<CheckpointRecord?>(nil)
    /// Idle bookkeeping (the pure state machine); `phase` is running or paused here.
    let idle: Mutex<IdleTracker>

    enum Readiness { case waiting, ready(UInt64), failed(String) }

    struct State {
        var record: SandboxRecord
        var channel: AgentChannel?
        var execs: [UInt32: ExecSession] = [:]
        var finishedOrder: [UInt32] = []
        var readiness: Readiness = .waiting
        var readyWaiter: CheckedContinuation<UInt64, Error>?
        var exited = false
        var exitStatus: Int32?
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
        var statsWaiters: [UInt32: CheckedContinuation<UInt64, Never>] = [:]
        var restoreWaiters: [UInt32: CheckedContinuation<(killed: Int32, alive: Int32)?, Never>] = [:]
        var nestWaiters: [UInt32: CheckedContinuation<(value: Int32, text: String)?, Never>] = [:]
        var nextStatsId: UInt32 = 1
        var deleting = false
        var agentRssBytes: UInt64 = 0
    }

    let state: Mutex<State>
    /// Called once the agent has exited and been reaped (not on delete).
    let onUnexpectedExit: @Sendable (SandboxRuntime, String) -> Void

    static let keepFinishedExecs = 64
    /// Output of finished execs kept per sandbox for `exec.logs` (in memory
    /// up to 256 KiB each, past that in its log file in the data dir, and
    /// then none in memory once it ended): older execs' output goes past it
    /// (their summary stays in the catalog), so a sandbox that ran 64
    /// commands of 16 MiB each keeps neither 1 GiB of the daemon's memory
    /// nor of its disk. The latest finished exec is always kept.
    static let keepFinishedOutputBytes = 128 << 20

    /// The daemon-wide budget for finished execs' output; nil in tests of one runtime.
    let ledger: OutputLedger?

    init(record: SandboxRecord, plan: SandboxPlan, image: SandboxImage, cgroup: CgroupHandle, spawned: SandboxSpawner.Spawned, disk: FileDescriptor?,
         ledger: OutputLedger? = nil, onUnexpectedExit: @escaping @Sendable (SandboxRuntime, String) -> Void) {
        self.ledger = ledger
        self.id = record.id
        self.plan = plan
        self.image = image
        self.diskMount = Mutex(disk)
        self.idle = Mutex(IdleTracker(policy: plan.idle, now: Clock.nowMs()))
        self.cgroup = cgroup
        self.spawned = spawned
        self.state = Mutex(State(record: record))
        self.onUnexpectedExit = onUnexpectedExit
    }

    var record: SandboxRecord { state.withLock { $0.record } }

    // MARK: agent events (called on the channel's event loop)

    func handle(_ f: AgentFrame) {
        let now = Clock.monotonicNs()
        switch UInt32(f.type) {
        case SP_FRAME_READY.rawValue:
            let rss = f.uint64(at: 0)
            let w = state.withLock { s -> CheckedContinuation<UInt64, Error>? in
                s.readiness = .ready(rss)
                s.agentRssBytes = rss
                defer { s.readyWaiter = nil }
                return s.readyWaiter
            }
            w?.resume(returning: rss)
        case SP_FRAME_FATAL.rawValue:
            failReadiness("sandbox setup failed: " + f.text)
        case SP_FRAME_STARTED.rawValue:
            session(f.id)?.markStarted(now, pid: f.payload.count >= 4 ? f.int32() : nil)
        case SP_FRAME_SPAWN_ERROR.rawValue:
            let msg = String(decoding: f.payload.dropFirst(4), as: UTF8.self)
            if let s = session(f.id) {
                s.append(.stderr, Array(("sandpit: " + msg + "\n").utf8))
                s.finish(status: nil, nowNs: now, oomKilled: false, spawnError: msg)
                retire(f.id)
            }
        case SP_FRAME_OUTPUT.rawValue:
            session(f.id)?.append(f.stream == 2 ? .stderr : f.stream == 3 ? .pty : .stdout, f.payload)
        case SP_FRAME_INPUT_ACK.rawValue:
            if f.payload.count >= 8 { session(f.id)?.inputTaken(f.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }) }
        case SP_FRAME_EXITED.rawValue:
            if let s = session(f.id) {
                let status = f.int32()
                let byDaemon = daemonKilled.withLock { $0.remove(s.numericId) } != nil
                let base = oomBaseline.withLock { $0.removeValue(forKey: s.numericId) } ?? 0
                // The agent counts the OOM kills in the command's own group:
                // exact, whatever else ran. Only when it cannot (no memory
                // controller for that group), the old guess: SIGKILLed, not
                // by the daemon, while the sandbox's count moved.
                let ooms = f.payload.count >= 8 ? f.int32(at: 4) : -1
                if ooms >= 0 { oomCountedPerExec.store(true, ordering: .relaxed) }
                let oom = ooms >= 0 ? ooms > 0 : (status & 0x7f) == 9 && !byDaemon && cgroup.oomKills() > base
                s.finish(status: status, nowNs: now, oomKilled: oom)
                retire(f.id)
            }
        case SP_FRAME_RESTORED.rawValue:
            let w = state.withLock { $0.restoreWaiters.removeValue(forKey: f.id) }
            w?.resume(returning: (f.int32(at: 0), f.int32(at: 4)))
        case SP_FRAME_NESTED.rawValue:
            let w = state.withLock { $0.nestWaiters.removeValue(forKey: f.id) }
            w?.resume(returning: (f.int32(at: 0), String(decoding: f.payload.dropFirst(4), as: UTF8.self)))
        case SP_FRAME_STATS_REPLY.rawValue:
            let w = state.withLock { $0.statsWaiters.removeValue(forKey: f.id) }
            w?.resume(returning: f.uint64(at: 0))
        default:
            break
        }
    }

    /// Where the agent cannot count OOM kills per command, the sandbox's
    /// count when each exec started (the fallback guess); once it has, no
    /// exec pays for that read.
    private let oomBaseline = Mutex<[UInt32: Int]>([:])
    private let oomCountedPerExec = Atomic<Bool>(false)
    private let daemonKilled = Mutex<Set<UInt32>>([])
    func noteOOMBaseline(_ id: UInt32) {
        guard !oomCountedPerExec.load(ordering: .relaxed) else { return }
        let c = cgroup.oomKills()
        oomBaseline.withLock { $0[id] = c }
    }

    /// The daemon is about to SIGKILL this exec, still running (its timeout,
    /// exec.kill): that kill is what ends it, whatever the OOM killer does
    /// to its neighbours meanwhile.
    func noteDaemonKill(_ s: ExecSession) { if !s.isFinished { daemonKilled.withLock { _ = $0.insert(s.numericId) } } }

    // An exec ended by SIGKILL was OOM-killed when the daemon did not kill it
    // and the sandbox's OOM count rose while it ran. (The count is the
    // sandbox's: on cgroup v1 a neighbour's OOM kill in the same window, with
    // a SIGKILL from elsewhere, is not told apart.)

    func failReadiness(_ message: String) {
        let w = state.withLock { s -> CheckedContinuation<UInt64, Error>? in
            if case .waiting = s.readiness { s.readiness = .failed(message) }
            defer { s.readyWaiter = nil }
            return s.readyWaiter
        }
        w?.resume(throwing: SandpitError(.sandboxFailed, message))
    }

    func waitReady() async throws -> UInt64 {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<UInt64, Error>) in
            let r = state.withLock { s -> Readiness in
                if case .waiting = s.readiness { s.readyWaiter = c }
                return s.readiness
            }
            switch r {
            case .waiting: break
            case .ready(let rss): c.resume(returning: rss)
            case .failed(let m): c.resume(throwing: SandpitError(.sandboxFailed, m))
            }
        }
    }

    /// The control channel closed: the agent is exiting. Reap it off the
    /// cooperative pool (PID 1 exit waits for the whole namespace to die).
    func channelClosed(_ error: String?) {
        failReadiness("sandbox agent exited during setup" + (error.map { ": \($0)" } ?? ""))
        let (pid, pidfd, nested) = (spawned.pid, spawned.pidfd, spawned.nested)
        EngineThread.detach { [self] in
            if nested {
                // A zygote's agent is its parent and reaps it; we only see it go.
                SandboxSpawner.awaitExit(pidfd: pidfd)
                self.agentReaped(status: nil)
            } else {
                self.agentReaped(status: SandboxSpawner.reap(pid))
            }
        }
    }

    private func agentReaped(status: Int32?) {
        let now = Clock.monotonicNs()
        let (sessions, waiters, deleting) = state.withLock { s -> ([ExecSession], [CheckedContinuation<Void, Never>], Bool) in
            s.exited = true
            s.exitStatus = status
            defer { s.exitWaiters = [] }
            return (Array(s.execs.values), s.exitWaiters, s.deleting)
        }
        for x in sessions where !x.isFinished {
            x.finish(status: nil, nowNs: now, oomKilled: false, killedBy: deleting ? "sandbox deleted" : "sandbox exited")
        }
        let (pending, restoring, nesting) = state.withLock { s in
            defer { s.statsWaiters = [:]; s.restoreWaiters = [:]; s.nestWaiters = [:] }
            return (Array(s.statsWaiters.values), Array(s.restoreWaiters.values), Array(s.nestWaiters.values))
        }
        for p in pending { p.resume(returning: 0) }
        for r in restoring { r.resume(returning: nil) }
        for n in nesting { n.resume(returning: nil) }
        for w in waiters { w.resume() }
        if !deleting {
            let why = status.map { $0 & 0x7f == 0 ? "agent exited with status \(($0 >> 8) & 0xff)" : "agent killed by signal \($0 & 0x7f)" }
                ?? "agent exited (its zygote reaped it)"
            onUnexpectedExit(self, why)
        }
    }

    func waitExited() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.exited { return true }
                s.exitWaiters.append(c)
                return false
            }
            if done { c.resume() }
        }
    }

    var hasExited: Bool { state.withLock { $0.exited } }

    // MARK: execs

    func session(_ id: UInt32) -> ExecSession? { state.withLock { $0.execs[id] } }

    func session(named execId: String) -> ExecSession? {
        guard execId.hasPrefix("ex_"), let n = UInt32(execId.dropFirst(3)) else { return nil }
        return session(n)
    }

    /// Keeps the last few finished execs for exec.logs; forgets older ones:
    /// past this sandbox's caps, and past the daemon's budget (`OutputLedger`),
    /// which may forget any sandbox's oldest.
    private func retire(_ id: UInt32) {
        oomBaseline.withLock { _ = $0.removeValue(forKey: id) }
        let bytes = state.withLock { s -> Int in
            s.finishedOrder.append(id)
            var kept = s.finishedOrder.reduce(0) { $0 + (s.execs[$1]?.retainedBytes ?? 0) }
            while s.finishedOrder.count > Self.keepFinishedExecs || (kept > Self.keepFinishedOutputBytes && s.finishedOrder.count > 1) {
                let old = s.finishedOrder.removeFirst()
                kept -= s.execs.removeValue(forKey: old)?.retainedBytes ?? 0
            }
            return s.execs[id]?.retainedBytes ?? 0
        }
        ledger?.retired(self, exec: id, bytes: bytes)
    }

    /// Drops a finished exec's output (the daemon's budget asks): exec.logs
    /// then answers from its catalog summary. True if it was still here.
    @discardableResult
    func forgetFinished(_ id: UInt32) -> Bool {
        state.withLock { s in
            guard let i = s.finishedOrder.firstIndex(of: id) else { return false }
            s.finishedOrder.remove(at: i)
            s.execs.removeValue(forKey: id)
            return true
        }
    }

    /// Bytes its finished execs hold (what the ledger counts as this sandbox's).
    func retainedFinished(_ id: UInt32) -> Int? {
        state.withLock { s in s.finishedOrder.contains(id) ? s.execs[id]?.retainedBytes : nil }
    }

    func register(_ x: ExecSession) { state.withLock { $0.execs[x.numericId] = x } }

    func send(type: UInt32, id: UInt32, payload: [UInt8]) {
        state.withLock { $0.channel }?.send(type: type, id: id, payload: payload)
    }

    /// Signals an exec's process group (and what it left in its cgroup) through the agent.
    func signal(exec numericId: UInt32, _ signal: Int32) {
        var sig = signal
        send(type: SP_FRAME_SIGNAL.rawValue, id: numericId, payload: withUnsafeBytes(of: &sig) { Array($0) })
    }

    /// A client may shorten the policy's wall time, never lengthen it.
    func checkTimeout(_ asked: Int?) throws(SandpitError) {
        if let asked, let max = policy.execTimeoutMs, asked > max {
            throw SandpitError(.permissionDenied, "timeoutMs \(asked) is longer than policy \(policy.name) allows (\(max))",
                               details: ["field": "timeoutMs", "allowed": .int(max)])
        }
    }

    /// Asks the agent to kill every process but PID 1 and `keep`, making each
    /// `adopt` pid its exec's main process first; returns how many it killed
    /// and how many it could not (nil if the agent is gone).
    func killAllBut(keep: [Int32], adopt: [(exec: UInt32, pid: Int32)]) async -> (killed: Int32, alive: Int32)? {
        var payload: [UInt8] = []
        withUnsafeBytes(of: UInt32(adopt.count)) { payload += $0 }
        for a in adopt {
            withUnsafeBytes(of: a.exec) { payload += $0 }
            withUnsafeBytes(of: a.pid) { payload += $0 }
        }
        for k in keep { withUnsafeBytes(of: k) { payload += $0 } }
        return await request(SP_FRAME_RESTORE.rawValue, payload, waiters: \.restoreWaiters, gone: nil)
    }

    /// Sends a request frame under a fresh id and waits for the answer the
    /// frame handler passes to `waiters[id]`; `gone` if the agent has exited
    /// (`agentReaped` answers every waiter left with it).
    private func request<T: Sendable>(_ type: UInt32, _ payload: [UInt8], waiters: WritableKeyPath<State, [UInt32: CheckedContinuation<T, Never>]>,
                                      gone: T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            let (id, ch, exited) = state.withLock { s -> (UInt32, AgentChannel?, Bool) in
                let id = s.nextStatsId
                s.nextStatsId &+= 1
                if !s.exited { s[keyPath: waiters][id] = c }
                return (id, s.channel, s.exited)
            }
            if exited { c.resume(returning: gone); return }
            ch?.send(type: type, id: id, payload: payload)
        }
    }

    /// A zygote's agent: starts a nested sandbox's agent (NEST; the
    /// descriptors went ahead on the nest socket). Returns the child's pid in
    /// the zygote, or -errno and what failed; nil if the agent is gone.
    func nest(_ payload: [UInt8]) async -> (value: Int32, text: String)? {
        await request(SP_FRAME_NEST.rawValue, payload, waiters: \.nestWaiters, gone: nil)
    }

    /// Sends `signal` to one process of the sandbox, from PID 1.
    func signal(pid: Int32, _ signal: Int32) {
        var v: (Int32, Int32) = (pid, signal)
        send(type: SP_FRAME_SIGNAL_PID.rawValue, id: 0, payload: withUnsafeBytes(of: &v) { Array($0) })
    }

    func stats() async -> UInt64 {
        await request(SP_FRAME_STATS.rawValue, [], waiters: \.statsWaiters, gone: 0)
    }
}

/// A plain detached pthread for blocking waits (waitpid), so they never
/// occupy a thread of Swift's cooperative pool.
public enum EngineThread {
    /// Runs blocking work on its own thread and awaits its result.
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            detach { c.resume(with: Result { try body() }) }
        }
    }

    public static func detach(_ body: @escaping @Sendable () -> Void) { OSThread.detach(body) }
}

#if canImport(Glibc)
import Glibc
#endif

/// `body`'s result, or `message` as a `sandboxFailed` error once `seconds` have passed (`body` is cancelled).
func withDeadline<T: Sendable>(seconds: Int, _ message: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { g in
        g.addTask { try await body() }
        g.addTask {
            try await Task.sleep(for: .seconds(seconds))
            throw SandpitError(.sandboxFailed, message)
        }
        defer { g.cancelAll() }
        return try await g.next()!
    }
}

/// Lets the daemon's file calls write into a sandbox's disk while no
/// checkpoint holds its writers, and a checkpoint hold them only when none is
/// writing (else it freezes the filesystem, which holds every writer anyway).
/// A writer that arrives during such a checkpoint waits for it (milliseconds).
final class DiskWriterGate: @unchecked Sendable {
    private let cond = NSCondition()
    private var writers = 0
    private var held = false

    /// Runs a write into the sandbox's files (on an engine thread: it may block briefly).
    func write<T>(_ body: () throws -> T) rethrows -> T {
        cond.lock()
        while held { cond.wait() }
        writers += 1
        cond.unlock()
        defer {
            cond.lock()
            writers -= 1
            cond.unlock()
        }
        return try body()
    }

    /// Holds writers out, if none is writing now: true, and `open()` lets them in again.
    func close() -> Bool {
        cond.lock()
        defer { cond.unlock() }
        guard writers == 0, !held else { return false }
        held = true
        return true
    }

    func open() {
        cond.lock()
        held = false
        cond.broadcast()
        cond.unlock()
    }
}

/// The daemon-wide budget for the output finished execs keep for `exec.logs`.
/// Each sandbox keeps its last 64 execs and 32 MiB; with many sandboxes that
/// alone would be gigabytes, so the daemon also counts every sandbox's, in
/// the order they finished, and past its budget forgets the oldest wherever
/// they are (their catalog summary stays). Entries of deleted sandboxes, or
/// that a sandbox already forgot, are found stale and skipped.
final class OutputLedger: Sendable {
    private struct Entry { weak var runtime: SandboxRuntime?; let exec: UInt32; let bytes: Int }
    private struct State { var entries: [Entry] = []; var head = 0; var total = 0 }
    private let state = Mutex(State())
    let budget: Int

    init(budget: Int) { self.budget = budget }

    var totalBytes: Int { state.withLock { $0.total } }

    func retired(_ rt: SandboxRuntime, exec: UInt32, bytes: Int) {
        guard bytes > 0 else { return }
        let evict = state.withLock { s -> [Entry] in
            s.entries.append(Entry(runtime: rt, exec: exec, bytes: bytes))
            s.total += bytes
            var out: [Entry] = []
            while s.total > budget, s.head < s.entries.count {
                let e = s.entries[s.head]
                s.head += 1
                s.total -= e.bytes
                out.append(e)
            }
            // Entries a sandbox dropped on its own (its caps, its deletion) still count
            // until they reach the head; compact now and then so the array stays small.
            if s.head > 1024, s.head * 2 > s.entries.count {
                s.entries.removeFirst(s.head)
                s.head = 0
                let live = s.entries.filter { $0.runtime?.retainedFinished($0.exec) != nil }
                s.entries = live
                s.total = live.reduce(0) { $0 + $1.bytes }
            }
            return out
        }
        for e in evict { e.runtime?.forgetFinished(e.exec) }
    }
}
