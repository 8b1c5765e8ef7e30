#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import SandpitClient
import SandpitCore
import SandpitOS
import SandpitProtocol
import Synchronization

struct Batch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a JSONL file of tasks, each in its own fresh sandbox, in parallel; write one result line per task.",
        discussion: """
            Each line of TASKS is an object: {"id", "cmd" (shell string or argv array) or "code" (python), \
            "timeoutMs"?, "files"? (path → text), "setup"? (shell commands), "expect"? ({exitCode?, stdout?, \
            stdoutContains?})}. Tasks with the same files and setup fork from one base sandbox that ran the \
            setup once. Each result line has id, status (passed, failed, timeout, oom, error), reason, exitCode, \
            stdout, stderr (capped), durationMs and timings.

            Exit status: 0 when every task ran (whatever its verdict), 1 when some task could not run (error), \
            130 when interrupted. Interrupting keeps the results written so far: rerun with --resume to do the rest.
            """)

    @Argument(help: "The tasks: one JSON object per line.") var tasks: String
    @Option(help: "Where to write result lines (JSONL).") var out: String
    @Option(help: "Template for the task sandboxes.") var template = "default"
    @Option(help: "Policy for the task sandboxes.") var policy = "default"
    @Option(help: "Tasks at once (default: what the admission caps and the host's CPUs allow at the policy's CPU share).") var concurrency: Int?
    @Option(help: "Bytes of stdout and of stderr kept per result.") var outputBytes = 65_536
    @Flag(help: "Skip the tasks that already have a result in --out and append the rest.") var resume = false
    @Flag(help: "Replace --out if it has results.") var overwrite = false
    @Flag(help: "No progress output, only the summary.") var quiet = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        if let c = concurrency, c < 1 { throw ValidationError("--concurrency must be at least 1") }
        guard !(resume && overwrite) else { throw ValidationError("give --resume or --overwrite, not both") }
        let all = try Self.readTasks(tasks)
        let done = try previousResults()
        let todo = all.filter { done[$0.id] == nil }
        let file = open(out, O_WRONLY | O_CREAT | O_CLOEXEC | (resume ? O_APPEND : O_TRUNC), 0o644)
        guard file >= 0 else { throw ValidationError("cannot open --out \(out): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(file) }
        let prior = done.values.reduce(into: BatchTally()) { $0.add($1) }
        if resume && !done.isEmpty && !quiet { FileHandleStderr.write("resuming: \(done.count) of \(all.count) tasks already have results in \(out)\n") }

        let c = try await client.connect()
        let view = BatchProgressView(total: all.count, prior: prior, terminal: isatty(2) == 1, quiet: quiet)
        let interrupted = SignalWatcher([SIGINT, SIGTERM])
        let started = Clock.monotonicNs()
        var stopped = false
        var concurrencyUsed = concurrency ?? 0
        do {
            for chunk in Self.chunks(todo) where !stopped {
                var params: JSONObject = ["tasks": .array(chunk.map(\.json)), "template": .string(template), "policy": .string(policy),
                                          "outputBytes": .int(Int64(outputBytes))]
                if let n = concurrency { params["concurrency"] = .int(Int64(n)) }
                let request = params
                let r = try await withThrowingTaskGroup(of: JSONValue?.self) { g in
                    g.addTask {
                        try await c.call("batch.run", request) { method, p in
                            switch method {
                            case "batch.result":
                                guard let r = p["result"] else { return }
                                Console.write(Array((JSONCodec.encode(r) + "\n").utf8), fd: file)
                                view.add(r["status"]?.stringValue.flatMap(BatchStatus.init(rawValue:)) ?? .error)
                            case "batch.progress":
                                view.tick()
                            default: break
                            }
                        }
                    }
                    g.addTask { _ = await interrupted.next(); return nil }
                    defer { g.cancelAll() }
                    let first = try await g.next()!
                    if first == nil { await c.abort() }
                    return first
                }
                guard let r else { stopped = true; break }
                concurrencyUsed = Int(r["concurrency"]?.intValue ?? Int64(concurrencyUsed))
            }
        } catch {
            view.finish()
            await c.close()
            if stopped { throw ExitCode(130) }
            throw error
        }
        interrupted.stop()
        view.finish()
        await c.close()
        let secs = Double(Clock.monotonicNs() - started) / 1e9
        let tally = view.tally
        print(Self.summary(tally, total: all.count, ran: tally.done - prior.done, seconds: secs, concurrency: concurrencyUsed, out: out))
        if stopped {
            FileHandleStderr.write("interrupted: \(tally.done) of \(all.count) tasks have results; rerun with --resume to run the rest\n")
            throw ExitCode(130)
        }
        if tally[.error] > 0 { throw ExitCode(1) }
    }

    /// The tasks file, checked line by line before anything runs.
    static func readTasks(_ path: String) throws -> [BatchTask] {
        let text: String
        do { text = try FS.readText(path) } catch { throw ValidationError("cannot read \(path): \(error)") }
        var out: [BatchTask] = []
        var ids = Set<String>()
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.allSatisfy(\.isWhitespace) { continue }
            do {
                let v = try JSONCodec.parse(Array(line.utf8))
                let t = try BatchTask.parse(v, at: "task")
                guard ids.insert(t.id).inserted else { throw SandpitError.invalidParams("id", "duplicate task id \(t.id)") }
                out.append(t)
            } catch let e as SandpitError {
                throw ValidationError("\(path):\(n + 1): \(e.message)")
            }
        }
        if out.isEmpty { throw ValidationError("\(path) has no tasks") }
        return out
    }

    /// Results already in --out (id → status), when resuming.
    func previousResults() throws -> [String: BatchStatus] {
        guard let text = try? FS.readText(out), !text.isEmpty else { return [:] }
        guard resume || overwrite else {
            throw ValidationError("\(out) already has results: pass --resume to skip the tasks it has, or --overwrite to start over")
        }
        guard resume else { return [:] }
        var done: [String: BatchStatus] = [:]
        for line in text.split(separator: "\n") {
            // A line cut short by an interruption is not a result: that task runs again.
            guard let v = try? JSONCodec.parse(Array(line.utf8)), let id = v["id"]?.stringValue,
                  let s = v["status"]?.stringValue.flatMap(BatchStatus.init(rawValue:)) else { continue }
            done[id] = s
        }
        return done
    }

    /// Requests of at most ~8 MiB (the daemon's line limit is 16 MiB).
    static func chunks(_ tasks: [BatchTask]) -> [[BatchTask]] {
        var out: [[BatchTask]] = [[]]
        var bytes = 0
        for t in tasks {
            let n = JSONCodec.encode(t.json).utf8.count
            if bytes + n > 8 << 20 && !out[out.count - 1].isEmpty {
                out.append([])
                bytes = 0
            }
            out[out.count - 1].append(t)
            bytes += n
        }
        return out.filter { !$0.isEmpty }
    }

    static func summary(_ t: BatchTally, total: Int, ran: Int, seconds: Double, concurrency: Int, out: String) -> String {
        var lines = ["", "status     tasks"]
        for s in BatchStatus.allCases {
            lines.append(s.rawValue.column(9) + String(t[s]).leftPad(7))
        }
        lines.append("total".column(9) + String(t.done).leftPad(7) + " of \(total)")
        let rate = Double(ran) / max(seconds, 1e-9)
        lines.append("ran \(ran) in \(Self.tenths(seconds)) s (\(Self.tenths(rate)) tasks/s, concurrency \(concurrency)); results in \(out)")
        return lines.joined(separator: "\n")
    }

    /// `v` with one decimal (no Foundation formatter in the CLI).
    static func tenths(_ v: Double) -> String {
        let t = Int((v * 10).rounded())
        return "\(t / 10).\(t % 10)"
    }
}

extension String {
    /// Left-aligned in a column `n` wide, with at least one space after.
    func column(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
    /// Right-aligned in `n` characters.
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

extension BatchTask {
    /// The task as a `batch.run` params entry.
    var json: JSONValue {
        var o: JSONObject = ["id": .string(id)]
        if !files.isEmpty {
            var f = JSONObject()
            for file in files { f[file.path] = .string(file.text) }
            o["files"] = .object(f)
        }
        if !setup.isEmpty { o["setup"] = .array(setup.map { .string($0) }) }
        switch run {
        case .argv(let a): o["cmd"] = .array(a.map { .string($0) })
        case .shell(let s): o["cmd"] = .string(s)
        case .python(let c): o["code"] = .string(c)
        }
        if let t = timeoutMs { o["timeoutMs"] = .int(Int64(t)) }
        if let e = expect {
            var x = JSONObject()
            if let c = e.exitCode { x["exitCode"] = .int(Int64(c)) }
            if let s = e.stdout { x["stdout"] = .string(s) }
            if let s = e.stdoutContains { x["stdoutContains"] = .string(s) }
            o["expect"] = .object(x)
        }
        return .object(o)
    }
}

/// Progress on stderr: a bar redrawn in place on a terminal, a plain line
/// every few seconds otherwise.
final class BatchProgressView: Sendable {
    struct State {
        var tally: BatchTally
        var lastLine: UInt64 = 0
    }
    let total: Int
    let terminal: Bool
    let quiet: Bool
    let started = Clock.monotonicNs()
    let priorDone: Int
    let state: Mutex<State>

    init(total: Int, prior: BatchTally, terminal: Bool, quiet: Bool) {
        self.total = total
        self.terminal = terminal
        self.quiet = quiet
        self.priorDone = prior.done
        self.state = Mutex(State(tally: prior))
    }

    var tally: BatchTally { state.withLock { $0.tally } }

    func add(_ s: BatchStatus) {
        state.withLock { $0.tally.add(s) }
        tick()
    }

    func tick() {
        guard !quiet else { return }
        let now = Clock.monotonicNs()
        let line: String? = state.withLock { st in
            // A terminal redraws at most 10 times a second; a log gets a line every 5 s.
            let every: UInt64 = terminal ? 100_000_000 : 5_000_000_000
            guard now - st.lastLine >= every else { return nil }
            st.lastLine = now
            return render(st.tally, now: now)
        }
        if let line { FileHandleStderr.write(terminal ? "\r\u{1B}[2K" + line : line + "\n") }
    }

    func finish() {
        guard !quiet else { return }
        let line = state.withLock { render($0.tally, now: Clock.monotonicNs()) }
        FileHandleStderr.write(terminal ? "\r\u{1B}[2K" + line + "\n" : line + "\n")
    }

    func render(_ t: BatchTally, now: UInt64) -> String {
        let secs = Double(now - started) / 1e9
        let ran = t.done - priorDone
        let rate = Double(ran) / max(secs, 1e-9)
        let left = total - t.done
        let eta = ran > 0 ? "ETA \(Int((Double(left) / max(rate, 1e-9)).rounded()))s" : "ETA -"
        let width = 24
        let filled = total == 0 ? width : width * t.done / total
        let bar = terminal ? "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] " : ""
        return bar + "\(t.done)/\(total)  passed \(t[.passed])  failed \(t[.failed])  timeout \(t[.timeout])  oom \(t[.oom])  error \(t[.error])"
            + "  \(Batch.tenths(rate))/s  \(eta)"
    }
}
