import Glibc
import SandpitCore
import SandpitOS
import Synchronization

/// How an exec ended.
public struct ExecOutcome: Sendable, Equatable {
    public var exitCode: Int
    public var signal: Int32?
    public var timedOut: Bool
    public var oomKilled: Bool
    public var spawnError: String?
    public var killedBy: String?      // "delete", "sandbox exited", …
    public var durationMs: Double
    public var stdoutBytes: Int64
    public var stderrBytes: Int64
    public var truncated: Bool
    public var timings: Timings
}

/// Phases of an exec, in microseconds.
public struct Timings: Sendable, Equatable {
    public var queueUs: Int64 = 0    // request received → spawn sent to the agent
    public var spawnUs: Int64 = 0    // spawn sent → process started
    public var runUs: Int64 = 0      // process started → exit and output drained
}

/// One command running (or finished) in a sandbox. Output is retained within
/// the policy's budget; readers pull chunks by sequence number, so a slow
/// reader never makes the daemon buffer more than the budget.
public final class ExecSession: Sendable {
    public let execId: String
    let numericId: UInt32
    public let command: [String]
    public let sandboxId: String

    struct State {
        var buffer: OutputBuffer
        var outcome: ExecOutcome?
        var started = false
        var startWaiters: [CheckedContinuation<Void, Never>] = []
        var waiters: [CheckedContinuation<Void, Never>] = []
        var timedOut = false
        /// Why the daemon is about to kill it (e.g. "sandbox restored"), for its outcome.
        var killedBy: String?
        var receivedNs: UInt64
        var spawnSentNs: UInt64 = 0
        var startedNs: UInt64 = 0
        var pid: Int32?
        var spawnError: String?
        /// Set once the step is recorded (step number advanced, checkpoint taken or not).
        var recorded: StepRecord?
        var recordWaiters: [CheckedContinuation<StepRecord, Never>] = []
        /// Input sent to the agent, and taken by the command (the agent's acks).
        var inputSent: UInt64 = 0
        var inputTaken: UInt64 = 0
        var inputClosed = false
        var inputWaiters: [CheckedContinuation<Void, Never>] = []
        /// Output written since anyone last read this exec's output.
        var unread: Int64 = 0
        var unreadLimitHit = false
        /// The log file once output outgrew `memoryBytes` (open while the
        /// exec runs), and whether making or writing it failed.
        var log: OffsetFile?
        var logFailed = false
    }

    /// Retained output an exec keeps in memory; beyond it, its output goes
    /// to `logPath` and only the newest this much stays in memory.
    public static let memoryBytes = 256 << 10
    /// Where its output goes once it outgrows `memoryBytes` (nil: memory only).
    let logPath: String?

    /// A command whose output nobody reads (a detached `yes`) is killed once
    /// this much has gone unread: it would only burn CPU for output the
    /// budget throws away. A reader (a streaming exec.run, exec.logs,
    /// exec.wait) resets the count.
    public static let unreadOutputLimit: Int64 = 256 << 20
    /// Called once when `unreadOutputLimit` is passed.
    let onUnreadLimit = Mutex<(@Sendable () -> Void)?>(nil)

    /// How the command's stdin can be written to after it starts.
    public enum Input: Sendable { case none, pipe, terminal }
    public let input: Input
    /// Input that may wait in the sandbox, not yet taken by the command.
    static let inputWindow: UInt64 = 1 << 20

    let state: Mutex<State>
    /// Set when starting this exec had to wake its sandbox.
    private let wakeInfo = Mutex<Wake?>(nil)
    public var wake: Wake? {
        get { wakeInfo.withLock { $0 } }
        set { wakeInfo.withLock { $0 = newValue } }
    }

    init(sandboxId: String, numericId: UInt32, command: [String], outputBudget: Int, receivedNs: UInt64, input: Input = .none,
         logPath: String? = nil) {
        self.input = input
        self.logPath = logPath
        self.sandboxId = sandboxId
        self.numericId = numericId
        self.execId = "ex_\(numericId)"
        self.command = command
        self.state = Mutex(State(buffer: OutputBuffer(budget: outputBudget, memoryBytes: logPath == nil ? .max : Self.memoryBytes),
                                 receivedNs: receivedNs))
    }

    deinit {
        guard let logPath else { return }
        let spilled = state.withLock { s -> Bool in
            s.log?.close()
            s.log = nil
            return s.buffer.spilled
        }
        if spilled { unlink(logPath) }
    }

    public var isFinished: Bool { state.withLock { $0.outcome != nil } }
    /// Output bytes retained for readers (in memory or in its log).
    var retainedBytes: Int { state.withLock { $0.buffer.retainedBytes } }
    public var outcome: ExecOutcome? { state.withLock { $0.outcome } }

    func markSpawnSent(_ ns: UInt64) { state.withLock { $0.spawnSentNs = ns } }

    /// The process's pid in the sandbox, once started.
    var pid: Int32? { state.withLock { $0.pid } }

    func markStarted(_ ns: UInt64, pid: Int32? = nil) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.started = true
            s.startedNs = ns
            s.pid = pid
            defer { s.startWaiters = [] }
            return s.startWaiters
        }
        for w in waiters { w.resume() }
    }

    func markTimedOut() { state.withLock { $0.timedOut = true } }
    func markKilled(by reason: String) { state.withLock { if $0.killedBy == nil { $0.killedBy = reason } } }

    /// Records a chunk of output and wakes readers.
    func append(_ stream: OutputStream, _ bytes: [UInt8]) {
        let (waiters, overflow) = state.withLock { s -> ([CheckedContinuation<Void, Never>], Bool) in
            let pieces = s.buffer.append(stream, bytes)
            log(&s, pieces)
            s.unread += Int64(bytes.count)
            let over = s.unread > Self.unreadOutputLimit && !s.unreadLimitHit && s.outcome == nil
            if over { s.unreadLimitHit = true }
            defer { s.waiters = [] }
            return (s.waiters, over)
        }
        for w in waiters { w.resume() }
        if overflow, let f = onUnreadLimit.withLock({ $0 }) { f() }
    }

    /// Writes what was appended to the log: once output outgrows memory, the
    /// retained bytes go there at their offsets and leave memory but for
    /// the newest; the dropped middle is punched out of the file (in MiB
    /// steps), so it takes no more disk than the budget. Without a log (no
    /// path, or it failed) everything stays in memory as before.
    private func log(_ s: inout State, _ pieces: [(chunk: OutputChunk, offset: Int64)]) {
        guard let logPath, !s.logFailed else { return }
        if !s.buffer.spilled {
            guard s.buffer.inMemoryBytes > Self.memoryBytes else { return }
            try? FS.mkdirs(String(logPath[..<(logPath.lastIndex(of: "/") ?? logPath.endIndex)]), mode: 0o700)
            guard let f = try? OffsetFile.create(logPath) else { s.logFailed = true; return }
            guard s.buffer.chunksInMemory.allSatisfy({ f.write($0.bytes, at: $0.offset) }) else {
                f.close()
                unlink(logPath)
                s.logFailed = true
                return
            }
            s.log = f
            s.buffer.spill()
        } else if let f = s.log {
            for p in pieces where !f.write(p.chunk.bytes, at: p.offset) { s.logFailed = true }
        }
        if let f = s.log, let d = s.buffer.takeDropped(minBytes: 1 << 20) { f.release(offset: d.offset, length: d.length) }
    }

    /// Reads retained bytes that left memory back from the log.
    private func readLog(_ s: State, _ offset: Int64, _ length: Int) -> [UInt8]? {
        guard let logPath, s.buffer.spilled, let f = s.log ?? OffsetFile.openForReading(logPath) else { return nil }
        defer { if s.log == nil { f.close() } }
        return f.read(at: offset, count: length)
    }

    func inputSent(_ n: UInt64) { state.withLock { $0.inputSent += n } }

    /// The agent wrote `total` bytes of input to the command so far.
    func inputTaken(_ total: UInt64) {
        let w = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.inputTaken = max(s.inputTaken, total)
            defer { s.inputWaiters = [] }
            return s.inputWaiters
        }
        for c in w { c.resume() }
    }

    func checkInputOpen() throws {
        let (closed, done) = state.withLock { ($0.inputClosed, $0.outcome != nil) }
        if done { throw SandpitError(.invalidState, "exec \(execId) has ended") }
        if closed { throw SandpitError(.invalidState, "exec \(execId)'s stdin is closed (eof was sent)") }
    }

    func closeInput() { state.withLock { $0.inputClosed = true } }

    /// Waits until `n` more bytes fit in the input window, then counts them as
    /// sent. A command that does not read makes the write fail after `waitMs`.
    func reserveInput(_ n: UInt64, waitMs: Int) async throws {
        let deadline = ContinuousClock.now + .milliseconds(waitMs)
        while true {
            let ok = try state.withLock { s -> Bool in
                if s.outcome != nil { throw SandpitError(.invalidState, "exec \(execId) has ended") }
                guard s.inputSent - s.inputTaken + n <= Self.inputWindow || s.inputSent == s.inputTaken else { return false }
                s.inputSent += n
                return true
            }
            if ok { return }
            if ContinuousClock.now >= deadline {
                throw SandpitError(.limitExceeded, "the command has not read its input for \(waitMs) ms (\(Self.inputWindow >> 10) KiB are waiting)",
                                   details: ["waitingBytes": .int(Int64(state.withLock { $0.inputSent - $0.inputTaken }))])
            }
            // Woken by the next ack or the exec's end; re-checked at least every 100 ms.
            let tick = Task { [self] in
                try? await Task.sleep(for: .milliseconds(100))
                wakeInputWaiters()
            }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.outcome != nil || s.inputSent - s.inputTaken + n <= Self.inputWindow { return true }
                    s.inputWaiters.append(c)
                    return false
                }
                if ready { c.resume() }
            }
            tick.cancel()
        }
    }

    func wakeInputWaiters() {
        let w = state.withLock { s -> [CheckedContinuation<Void, Never>] in defer { s.inputWaiters = [] }; return s.inputWaiters }
        for c in w { c.resume() }
    }

    /// Drops output a reader has consumed (service execs, whose output is never replayed).
    func consumed(through seq: Int) { state.withLock { $0.buffer.discard(through: seq) } }

    /// Ends the exec. `status` is a wait(2) status; nil when the process never ran or was lost.
    func finish(status: Int32?, nowNs: UInt64, oomKilled: Bool, spawnError: String? = nil, killedBy: String? = nil) {
        let (waiters, starts) = state.withLock { s -> ([CheckedContinuation<Void, Never>], [CheckedContinuation<Void, Never>]) in
            guard s.outcome == nil else { return ([], []) }
            var code = 0
            var sig: Int32?
            if let st = status {
                if st & 0x7f == 0 { code = Int((st >> 8) & 0xff) } else { sig = st & 0x7f; code = 128 + Int(st & 0x7f) }
            } else if let e = spawnError {
                code = e.contains("No such file") ? 127 : 126
                s.spawnError = e
            } else {
                sig = 9
                code = 137
            }
            let started = s.startedNs == 0 ? nowNs : s.startedNs
            var t = Timings()
            if s.spawnSentNs > 0 {
                t.queueUs = Int64(s.spawnSentNs &- s.receivedNs) / 1000
                t.spawnUs = s.startedNs > 0 ? Int64(s.startedNs &- s.spawnSentNs) / 1000 : Int64(nowNs &- s.spawnSentNs) / 1000
            }
            t.runUs = s.startedNs > 0 ? Int64(nowNs &- started) / 1000 : 0
            s.outcome = ExecOutcome(
                exitCode: code, signal: sig, timedOut: s.timedOut, oomKilled: oomKilled, spawnError: spawnError,
                killedBy: killedBy ?? s.killedBy, durationMs: Double(nowNs &- s.receivedNs) / 1e6,
                stdoutBytes: s.buffer.stdoutBytes, stderrBytes: s.buffer.stderrBytes, truncated: s.buffer.truncated, timings: t)
            s.started = true
            // Readers open the log when they need it: a finished exec holds no
            // descriptor, and no memory for output that is in its log.
            s.log?.close()
            s.log = nil
            s.buffer.leaveMemory()
            defer { s.waiters = []; s.startWaiters = [] }
            return (s.waiters, s.startWaiters)
        }
        for w in waiters { w.resume() }
        for w in starts { w.resume() }
        wakeInputWaiters()
    }

    /// Waits until the process has started (or the exec ended without starting).
    /// What finishing this exec did to its sandbox: the step it became and
    /// its checkpoint (or why there is none).
    public struct StepRecord: Sendable {
        public var step: Int
        public var checkpoint: CheckpointRecord?
        public var checkpointError: String?
        public var checkpointUs: Int64 = 0
    }

    func markRecorded(_ r: StepRecord) {
        let waiters = state.withLock { s -> [CheckedContinuation<StepRecord, Never>] in
            s.recorded = r
            defer { s.recordWaiters = [] }
            return s.recordWaiters
        }
        for w in waiters { w.resume(returning: r) }
    }

    public func waitRecorded() async -> StepRecord {
        await withCheckedContinuation { (c: CheckedContinuation<StepRecord, Never>) in
            let r = state.withLock { s -> StepRecord? in
                if s.recorded == nil { s.recordWaiters.append(c) }
                return s.recorded
            }
            if let r { c.resume(returning: r) }
        }
    }

    public func waitStarted() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { s -> Bool in
                if s.started || s.outcome != nil { return true }
                s.startWaiters.append(c)
                return false
            }
            if ready { c.resume() }
        }
    }

    /// Retained chunks with seq > `after` (-1 for all), suspending until there
    /// are some or the exec has ended. Returns the outcome once ended and drained.
    /// With `untilCancelled`, a cancelled caller gets nothing back at once
    /// (`wakeAll` wakes it); otherwise it waits regardless.
    public func next(after: Int, untilCancelled: Bool = false) async -> (chunks: [OutputChunk], outcome: ExecOutcome?) {
        while true {
            let r: ([OutputChunk], ExecOutcome?)? = state.withLock { s in
                s.unread = 0
                let c = s.buffer.chunks(since: after + 1) { readLog(s, $0, $1) }
                if !c.isEmpty { return (c, nil) }
                if let o = s.outcome { return ([], o) }
                return nil
            }
            if let r { return r }
            if untilCancelled && Task.isCancelled { return ([], nil) }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.outcome != nil || s.buffer.nextSeq > after + 1 || (untilCancelled && Task.isCancelled) { return true }
                    s.waiters.append(c)
                    return false
                }
                if ready { c.resume() }
            }
        }
    }

    /// Waits until the exec has ended and returns how.
    public func waitFinished() async -> ExecOutcome {
        while true {
            if let o = outcome { return o }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.outcome != nil { return true }
                    s.waiters.append(c)
                    return false
                }
                if done { c.resume() }
            }
        }
    }

    /// A snapshot for exec.logs.
    public func logs(since: Int) -> (chunks: [OutputChunk], outcome: ExecOutcome?) {
        state.withLock { s in
            s.unread = 0
            return (s.buffer.chunks(since: since) { readLog(s, $0, $1) }, s.outcome)
        }
    }
}

extension ExecSession {
    /// Wakes every reader (they re-check their state); used on cancellation.
    public func wakeAll() {
        let w = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            defer { s.waiters = [] }
            return s.waiters
        }
        for c in w { c.resume() }
    }
}
