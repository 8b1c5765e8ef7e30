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

            Result lines keep each task's id as given (an integer stays an integer) and add its 0-based \
            `index` among the file's tasks. The file is read as a stream (any size, bounded memory); a bad line \
            is reported as FILE:LINE before anything runs.

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
        // Pass 1 checks every line before anything runs, keeping only the ids;
        // pass 2 reads the tasks again as they are scheduled: a file of any
        // size runs in bounded memory.
        let (total, _) = try Self.scanTasks(tasks)
        let done = try previousResults()
        let file = open(out, O_WRONLY | O_CREAT | O_CLOEXEC | (resume ? O_APPEND : O_TRUNC), 0o644)
        guard file >= 0 else { throw ValidationError("cannot open --out \(out): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(file) }
        let prior = done.values.reduce(into: BatchTally()) { $0.add($1) }
        if resume && !done.isEmpty && !quiet { FileHandleStderr.write("resuming: \(done.count) of \(total) tasks already have results in \(out)\n") }

        let c = try await client.connect()
        let view = BatchProgressView(total: total, prior: prior, terminal: isatty(2) == 1, quiet: quiet)
        let interrupted = SignalWatcher([SIGINT, SIGTERM])
        let started = Clock.monotonicNs()
        var stopped = false
        let concurrencyUsed = Shared<Int>(concurrency ?? 0)
        do {
            var reader = try TaskLines(path: tasks)
            while !stopped, let chunk = try Self.nextChunk(&reader, skipping: done) {
                var params: JSONObject = ["tasks": .array(chunk.map(\.task.json)), "template": .string(template), "policy": .string(policy),
                                          "outputBytes": .int(Int64(outputBytes))]
                if let n = concurrency { params["concurrency"] = .int(Int64(n)) }
                let request = params
                let indices = chunk.map(\.index)
                let r = try await withThrowingTaskGroup(of: JSONValue?.self) { g in
                    g.addTask {
                        try await c.call("batch.run", request) { method, p in
                            switch method {
                            case "batch.result":
                                guard case .object(var r)? = p["result"] else { return }
                                // The task's place in the file, not in this request.
                                if let i = p["index"]?.intValue, i >= 0, Int(i) < indices.count { r["index"] = .int(Int64(indices[Int(i)])) }
                                Console.write(Array((JSONCodec.encode(.object(r)) + "\n").utf8), fd: file)
                                view.add(r["status"]?.stringValue.flatMap(BatchStatus.init(rawValue:)) ?? .error)
                            case "batch.progress":
                                if let n = p["concurrency"]?.intValue { concurrencyUsed.set(Int(n)) }
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
                if let n = r["concurrency"]?.intValue { concurrencyUsed.set(Int(n)) }
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
        print(Self.summary(tally, total: total, ran: tally.done - prior.done, seconds: secs, concurrency: concurrencyUsed.get(), out: out))
        if stopped {
            FileHandleStderr.write("interrupted: \(tally.done) of \(total) tasks have results; rerun with --resume to run the rest\n")
            throw ExitCode(130)
        }
        if tally[.error] > 0 { throw ExitCode(1) }
    }

    /// Checks every line of the tasks file; returns how many tasks it has and their ids.
    /// A bad line is reported as FILE:LINE with what is wrong.
    static func scanTasks(_ path: String) throws -> (count: Int, keys: Set<String>) {
        var reader = try TaskLines(path: path)
        var keys = Set<String>()
        var count = 0
        while let (n, line) = try reader.next() {
            let t = try parse(line, path: path, line: n)
            guard keys.insert(t.key).inserted else { throw ValidationError("\(path):\(n): duplicate task id \(t.key)") }
            count += 1
        }
        if count == 0 { throw ValidationError("\(path) has no tasks") }
        return (count, keys)
    }

    static func parse(_ line: [UInt8], path: String, line n: Int) throws -> BatchTask {
        do {
            return try BatchTask.parse(try JSONCodec.parse(line), at: "task")
        } catch let e as SandpitError {
            throw ValidationError("\(path):\(n): \(e.message)")
        } catch {
            throw ValidationError("\(path):\(n): \(error)")
        }
    }

    /// The next request's worth of tasks (at most ~4 MiB or 2,000 tasks; the
    /// daemon's line limit is 16 MiB), each with its 0-based index among the
    /// file's tasks; those with a result already are skipped.
    static func nextChunk(_ reader: inout TaskLines, skipping done: [String: BatchStatus]) throws -> [(index: Int, task: BatchTask)]? {
        var out: [(Int, BatchTask)] = []
        var bytes = 0
        while bytes < 4 << 20 && out.count < 2000, let (n, line) = try reader.next() {
            let t = try parse(line, path: reader.path, line: n)
            let index = reader.tasksRead - 1
            if done[t.key] != nil { continue }
            out.append((index, t))
            bytes += line.count
        }
        return out.isEmpty ? nil : out
    }

    /// Results already in --out (id → status), when resuming; read as a stream.
    func previousResults() throws -> [String: BatchStatus] {
        guard var reader = try? TaskLines(path: out), reader.size > 0 else { return [:] }
        guard resume || overwrite else {
            throw ValidationError("\(out) already has results: pass --resume to skip the tasks it has, or --overwrite to start over")
        }
        guard resume else { return [:] }
        var done: [String: BatchStatus] = [:]
        while let (_, line) = try reader.next() {
            // A line cut short by an interruption is not a result: that task runs again.
            guard let v = try? JSONCodec.parse(line), let id = v["id"], id != .null,
                  let s = v["status"]?.stringValue.flatMap(BatchStatus.init(rawValue:)) else { continue }
            done[BatchTask.key(id)] = s
        }
        return done
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
        var o: JSONObject = ["id": idValue]
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

/// The non-blank lines of a file, read in 1 MiB blocks, with their 1-based
/// line numbers (blank lines count for numbering but are not returned).
struct TaskLines {
    let path: String
    let fd: Int32
    let size: Int64
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false
    private var lineNumber = 0
    private(set) var tasksRead = 0
    /// A single line may not exceed this (a task carrying 64 MiB of files is a mistake).
    static let maxLine = 64 << 20

    init(path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ValidationError("cannot read \(path): \(String(cString: strerror(errno)))") }
        var st = stat()
        size = fstat(fd, &st) == 0 ? Int64(st.st_size) : 0
    }

    mutating func next() throws -> (Int, [UInt8])? {
        while true {
            if let nl = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) {
                var line = Array(buffer[start..<nl])
                start = nl + 1
                lineNumber += 1
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
                tasksRead += 1
                return (lineNumber, line)
            }
            if eof {
                guard start < buffer.count else { close(fd); return nil }
                buffer.append(UInt8(ascii: "\n"))   // a last line without its newline
                continue
            }
            if buffer.count - start > Self.maxLine { throw ValidationError("\(path):\(lineNumber + 1): a line longer than \(Self.maxLine >> 20) MiB") }
            buffer.removeFirst(start)
            start = 0
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw ValidationError("cannot read \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { eof = true } else { buffer += chunk[0..<n] }
        }
    }
}

/// A value shared with callbacks on other threads.
final class Shared<T: Sendable>: Sendable {
    private let value: Mutex<T>
    init(_ v: T) { value = Mutex(v) }
    func get() -> T { value.withLock { $0 } }
    func set(_ v: T) { value.withLock { $0 = v } }
}
