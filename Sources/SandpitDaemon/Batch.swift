#if canImport(Glibc)
import Glibc
#endif
import SandpitCore
import SandpitEngine
import SandpitOS
import SandpitProtocol
import Synchronization

/// Runs a batch of tasks, each in its own fresh sandbox, at most
/// `concurrency` at a time. Tasks that share files and setup share one
/// prepared base sandbox: it is set up once, checkpointed, and every such
/// task runs in a copy-on-write fork of it. Results are reported as each task
/// ends; the sandboxes (and bases) are deleted as soon as they are done with.
struct BatchRunner: Sendable {
    struct Options: Sendable {
        var template = "default"
        var policy = "default"
        var limits = JSONObject()
        var concurrency: Int
        /// Bytes of stdout and of stderr kept in each result (the rest is counted, not sent).
        var outputBytes = 65_536
    }

    let engine: Engine
    let caller: Caller
    let options: Options

    /// The default concurrency: what the admission caps allow at once, and no
    /// more sandboxes than the host's CPUs can run at the policy's CPU share
    /// (more would only make every task slower, and time out tasks that would
    /// have passed).
    static func capacity(engine: Engine, plan: SandboxPlan) -> Int {
        var n = engine.config.maxSandboxes
        if let e = engine.config.maxExecs { n = min(n, e) }
        if let budget = engine.config.memoryBudgetBytes, let m = plan.policy.memoryBytes, m > 0 { n = min(n, Int(budget / m)) }
        let cpus = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let share = plan.policy.cpuMillicores.map { Int($0) } ?? 1000
        n = min(n, max(1, cpus * 1000 / max(1, share)))
        return max(1, n)
    }

    /// Runs every task; `report` gets each result as it is known (throwing
    /// from it, e.g. because the client is gone, stops the batch). Every
    /// sandbox it made is deleted before it returns, however it ends.
    ///
    /// Each of the `concurrency` workers starts making its next sandbox while
    /// its current task runs, and deletes a finished task's sandbox off its
    /// path, so a task does not wait for either. That uses CPU time the tasks
    /// leave idle (I/O waits, fewer tasks than CPUs); on a batch that keeps
    /// every CPU busy it moves the cost of a sandbox (~14 ms of CPU to make
    /// and delete one here) rather than removing it.
    func run(_ tasks: [BatchTask], report: @escaping @Sendable (Int, Outcome) async throws -> Void) async throws {
        let bases = BaseSandboxes(runner: self)
        let cleanup = Cleanup()
        let next = TaskCounter()
        let plainTasks = tasks.contains { $0.baseKey == nil }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<min(options.concurrency, tasks.count) {
                    group.addTask {
                        var spare: Task<String, Error>?
                        defer { if let s = spare { cleanup.delete(after: s, runner: self) } }
                        while true {
                            let i = next.take()
                            guard i < tasks.count else { return }
                            let r = await runTask(tasks[i], bases: bases, spare: &spare, more: plainTasks && i + options.concurrency < tasks.count,
                                                  cleanup: cleanup)
                            try Task.checkCancellation()
                            try await report(i, r)
                        }
                    }
                }
                try await group.waitForAll()
            }
        } catch {
            await cleanup.finish()
            await bases.deleteAll()
            throw error
        }
        await cleanup.finish()
        await bases.deleteAll()
    }

    struct Outcome {
        var id: JSONValue
        var status: BatchStatus
        var reason: String?
        var exitCode: Int?
        var signal: Int32?
        var stdout = "", stderr = ""
        var stdoutBytes: Int64 = 0, stderrBytes: Int64 = 0
        var durationMs = 0.0
        var timings = JSONObject()
        var error: SandpitError?

        var json: JSONValue {
            var o: JSONObject = ["id": id, "status": .string(status.rawValue)]
            if let reason { o["reason"] = .string(reason) }
            o["exitCode"] = exitCode.map { .int(Int64($0)) } ?? .null
            if let signal { o["signal"] = .string(Signals.name(signal)) }
            o["stdout"] = .string(stdout)
            o["stderr"] = .string(stderr)
            o["stdoutBytes"] = .int(stdoutBytes)
            o["stderrBytes"] = .int(stderrBytes)
            o["durationMs"] = .double((durationMs * 100).rounded() / 100)
            o["timings"] = .object(timings)
            if let e = error { o["error"] = .object(["code": .string(e.code.rawValue), "message": .string(e.message)]) }
            return .object(o)
        }
    }

    /// One task, start to end; never throws: what goes wrong is its `error` status.
    func runTask(_ task: BatchTask, bases: BaseSandboxes, spare: inout Task<String, Error>?, more: Bool, cleanup: Cleanup) async -> Outcome {
        let t0 = Clock.monotonicNs()
        var out = Outcome(id: task.idValue, status: .error)
        func ms(since t: UInt64) -> JSONValue { .double(Double((Clock.monotonicNs() - t) / 10_000) / 100) }
        var sandbox: String?
        do {
            // A fresh sandbox: a fork of the task's prepared base, or a new one from the template.
            let ts = Clock.monotonicNs()
            if let key = task.baseKey, let base = try await bases.base(for: key, task: task) {
                let forked = try await engine.fork(base.sandbox, step: nil, checkpointId: base.checkpoint, count: 1, caller: caller)
                sandbox = forked.sandboxes.first?.id
            } else {
                let made = spare
                spare = nil
                if let made, let id = try? await made.value {
                    sandbox = id
                } else {
                    sandbox = try await newSandbox()
                }
                try await prepare(sandbox!, task)
            }
            out.timings["sandboxMs"] = ms(since: ts)
            if more && spare == nil { spare = Task { try await newSandbox() } }
            guard let id = sandbox else { throw SandpitError(.internal, "fork returned no sandbox") }
            let tr = Clock.monotonicNs()
            let (argv, stdin): ([String], [UInt8]?) = switch task.run {
            case .argv(let a): (a, nil)
            case .shell(let s): (["/bin/bash", "-c", s], nil)
            case .python(let code): (["python3", "-"], Array(code.utf8))
            }
            let session = try await engine.exec(id, ExecRequest(argv: argv, stdin: stdin, timeoutMs: task.timeoutMs), caller: caller)
            let o = await withTaskCancellationHandler {
                await session.waitFinished()
            } onCancel: { [engine, caller] in
                // Stopping the batch: deleting the sandbox ends the command.
                Task { try? await engine.delete(id, caller: caller) }
            }
            out.timings["runMs"] = ms(since: tr)
            var stdout: [UInt8] = [], stderr: [UInt8] = []
            for c in session.logs(since: 0).chunks {
                if c.stream == .stdout { stdout += c.bytes } else { stderr += c.bytes }
            }
            out.exitCode = o.exitCode
            out.signal = o.signal
            out.stdoutBytes = o.stdoutBytes
            out.stderrBytes = o.stderrBytes
            out.stdout = Self.text(stdout, cap: options.outputBytes)
            out.stderr = Self.text(stderr, cap: options.outputBytes)
            if let e = o.spawnError {
                out.status = .error
                out.reason = "could not start the command: \(e)"
            } else {
                let (status, reason) = BatchStatus.judge(exitCode: o.exitCode, signal: o.signal, timedOut: o.timedOut, oomKilled: o.oomKilled,
                                                         stdout: String(decoding: stdout, as: UTF8.self), expect: task.expect)
                out.status = status
                out.reason = status == .failed ? Self.exception(in: stderr) ?? reason : reason
                // What the command ran into explains its end better than the way it ended.
                let hit = engine.limitsHit(id)
                if let disk = hit.first(where: { $0.code == "disk_full" }) {
                    if out.status == .oom { out.status = .failed }
                    out.reason = "disk_full: " + disk.message + (out.reason.map { "; " + $0 } ?? "")
                }
                if let pids = hit.first(where: { $0.code == "pids_limit" }) {
                    out.reason = "pids_limit: " + pids.message + (out.reason.map { "; " + $0 } ?? "")
                }
            }
        } catch let e as SandpitError {
            out.status = .error
            out.error = e
            out.reason = e.message
        } catch {
            out.status = .error
            out.reason = "\(error)"
        }
        if let id = sandbox { cleanup.delete(id, runner: self) }
        out.durationMs = Double((Clock.monotonicNs() - t0) / 1000) / 1000
        return out
    }

    /// A sandbox with a scratch disk: thrown away after one task, it needs no
    /// checkpoints (the scratch disk turns them off).
    func newSandbox() async throws -> String {
        try await engine.create(template: options.template, policy: options.policy, limits: options.limits,
                                metadata: ["sandpit.batch": "task"], scratch: true, caller: caller).id
    }

    /// Writes a task's files and runs its setup commands in a sandbox.
    func prepare(_ id: String, _ task: BatchTask) async throws {
        if !task.files.isEmpty {
            let files = task.files.map { (Array($0.path.utf8), Array($0.text.utf8), UInt32?.none) }
            _ = try await engine.withFiles(id, caller: caller, write: true) { root, resolve in
                try RPCService.writeAll(root, files.map { (resolve($0.0), $0.1, $0.2) })
            }
        }
        for (i, cmd) in task.setup.enumerated() {
            let s = try await engine.exec(id, ExecRequest(argv: ["/bin/bash", "-c", cmd], timeoutMs: task.timeoutMs), caller: caller)
            let o = await s.waitFinished()
            if o.exitCode != 0 || o.timedOut || o.signal != nil {
                let tail = s.logs(since: 0).chunks.flatMap(\.bytes).suffix(2048)
                throw SandpitError(.sandboxFailed, "setup[\(i)] (\(cmd)) failed with \(o.timedOut ? "a timeout" : "exit code \(o.exitCode)"): "
                                   + String(decoding: tail, as: UTF8.self))
            }
        }
    }

    /// Output for a result line: valid UTF-8 (bad bytes replaced), at most `cap` bytes.
    static func text(_ b: [UInt8], cap: Int) -> String {
        if b.count <= cap { return String(decoding: b, as: UTF8.self) }
        return String(decoding: b.prefix(cap), as: UTF8.self) + "\n… [\(b.count - cap) more bytes]"
    }

    /// The last line of a Python traceback on stderr (`ValueError: bad`), as the failure's reason.
    static func exception(in stderr: [UInt8]) -> String? {
        let s = String(decoding: stderr.suffix(8192), as: UTF8.self)
        guard s.contains("Traceback (most recent call last)") else { return nil }
        guard let last = s.split(separator: "\n").last(where: { !$0.allSatisfy(\.isWhitespace) }) else { return nil }
        return "exception: " + last.trimmingPrefix(while: \.isWhitespace)
    }
}

/// The prepared bases of a batch, one per distinct files+setup, made on first use.
actor BaseSandboxes {
    struct Base: Sendable {
        var sandbox: String
        var checkpoint: String
    }
    let runner: BatchRunner
    var made: [String: Task<Base?, Error>] = [:]
    init(runner: BatchRunner) { self.runner = runner }

    /// The base for these files and setup; nil when the policy gives sandboxes
    /// no disk of their own (no checkpoint to fork): then each task prepares itself.
    func base(for key: String, task: BatchTask) async throws -> Base? {
        if let t = made[key] { return try await t.value }
        let r = runner
        let t = Task<Base?, Error> {
            var limits = r.options.limits
            limits["checkpoints"] = "manual"
            let plan = try r.engine.plan(policy: r.options.policy, limits: limits)
            if plan.policy.diskBytes == nil { return nil }
            let sb = try await r.engine.create(template: r.options.template, policy: r.options.policy, limits: limits,
                                               metadata: ["sandpit.batch": "base"], caller: r.caller)
            do {
                try await r.prepare(sb.id, task)
                let ck = try await r.engine.createCheckpoint(sb.id, name: "batch base", caller: r.caller)
                return Base(sandbox: sb.id, checkpoint: ck.id)
            } catch {
                try? await r.engine.delete(sb.id, caller: r.caller)
                throw error
            }
        }
        made[key] = t
        return try await t.value
    }

    func deleteAll() async {
        let all = made
        made = [:]
        for t in all.values {
            if let b = try? await t.value { try? await runner.engine.delete(b.sandbox, caller: runner.caller) }
        }
    }
}

/// `batch.run`: many tasks, each in its own fresh sandbox.
extension RPCService {
    static let maxBatchTasks = 100_000

    func batchRun(_ p: Params, requestId: JSONValue, peer: Peer, out: any RPCOutbound) async throws -> JSONValue {
        try p.expect(only: ["tasks", "template", "policy", "limits", "concurrency", "outputBytes", "progressMs"])
        guard let arr = p.object["tasks"]?.arrayValue else { throw SandpitError.invalidParams("tasks", "required: an array of tasks") }
        guard arr.count <= Self.maxBatchTasks else { throw SandpitError.invalidParams("tasks", "at most \(Self.maxBatchTasks) tasks per request") }
        var seen = Set<String>()
        let tasks = try arr.enumerated().map { (i, v) throws(SandpitError) -> BatchTask in
            let t = try BatchTask.parse(v, at: "tasks[\(i)]")
            guard seen.insert(t.key).inserted else { throw SandpitError.invalidParams("tasks[\(i)].id", "duplicate task id \(t.key)") }
            return t
        }
        var o = BatchRunner.Options(concurrency: 1)
        o.template = try p.string("template") ?? "default"
        o.policy = try p.string("policy") ?? "default"
        o.limits = try p.object("limits")?.object ?? [:]
        o.outputBytes = Int(try p.int("outputBytes", min: 0, max: 16 << 20) ?? 65_536)
        let plan = try engine.plan(policy: o.policy, limits: o.limits)
        _ = try await engine.resolveTemplate(o.template, caller: peer.caller)   // a bad name fails the request, not every task
        o.concurrency = Int(try p.int("concurrency", min: 1, max: Int64(engine.config.maxSandboxes))
                            ?? Int64(BatchRunner.capacity(engine: engine, plan: plan)))
        let progressMs = Int(try p.int("progressMs", min: 100, max: 3_600_000) ?? 1000)
        let runner = BatchRunner(engine: engine, caller: peer.caller, options: o)
        let started = Clock.monotonicNs()
        let total = tasks.count
        let tally = SharedTally()
        let concurrency = o.concurrency
        let progress = { @Sendable () -> JSONValue in
            var n = tally.value.withLock { $0.json }
            n["requestId"] = requestId
            n["total"] = .int(Int64(total))
            n["elapsedMs"] = .int(Int64((Clock.monotonicNs() - started) / 1_000_000))
            n["concurrency"] = .int(Int64(concurrency))
            return .object(n)
        }
        // The first progress says at once how many tasks run at a time.
        try await out.send(RPC.notification("batch.progress", progress()))
        // Progress every progressMs; it also finds a client that went away
        // while every running task is silent (the send fails, the batch stops).
        try await withThrowingTaskGroup(of: Bool.self) { g in
            g.addTask {
                try await runner.run(tasks) { i, r in
                    tally.value.withLock { $0.add(r.status) }
                    guard case .object(var result) = r.json else { return }
                    result["index"] = .int(Int64(i))
                    try await out.send(RPC.notification("batch.result", .object(["requestId": requestId, "index": .int(Int64(i)), "result": .object(result)])))
                }
                return true
            }
            g.addTask {
                while true {
                    try await Task.sleep(for: .milliseconds(progressMs))
                    try await out.send(RPC.notification("batch.progress", progress()))
                }
                return false
            }
            defer { g.cancelAll() }
            while try await g.next() == false {}
        }
        let secs = Double(Clock.monotonicNs() - started) / 1e9
        var r = tally.value.withLock { $0.json }
        r["total"] = .int(Int64(total))
        r["concurrency"] = .int(Int64(o.concurrency))
        r["durationMs"] = .int(Int64(secs * 1000))
        r["tasksPerSecond"] = .double((Double(total) / max(secs, 1e-9) * 100).rounded() / 100)
        return .object(r)
    }
}

final class SharedTally: Sendable {
    let value = Mutex(BatchTally())
}

/// Deletes a batch's sandboxes off the tasks' path; `finish` waits for all of them.
final class Cleanup: Sendable {
    let pending = Mutex<[Task<Void, Never>]>([])

    func delete(_ id: String, runner: BatchRunner) {
        let t = Task { _ = try? await runner.engine.delete(id, caller: runner.caller) }
        pending.withLock { $0.append(t) }
    }

    /// A sandbox still being made (a worker's spare it did not use).
    func delete(after made: Task<String, Error>, runner: BatchRunner) {
        let t = Task {
            if let id = try? await made.value { try? await runner.engine.delete(id, caller: runner.caller) }
        }
        pending.withLock { $0.append(t) }
    }

    func finish() async {
        while true {
            let batch = pending.withLock { p -> [Task<Void, Never>] in defer { p = [] }; return p }
            if batch.isEmpty { return }
            for t in batch { await t.value }
        }
    }
}

/// Hands out task indices to a batch's workers.
final class TaskCounter: Sendable {
    private let next = Atomic<Int>(0)
    func take() -> Int { next.add(1, ordering: .relaxed).oldValue }
}
