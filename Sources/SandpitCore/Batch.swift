/// One task of a batch evaluation (`sandpit batch`, `batch.run`): what runs in
/// its own fresh sandbox, and what counts as passing.
public struct BatchTask: Sendable, Equatable {
    public enum Run: Sendable, Equatable {
        case argv([String])
        case shell(String)
        case python(String)
    }

    /// What the task's stdout and exit code must be to pass.
    public struct Expect: Sendable, Equatable {
        public var exitCode: Int?
        /// The whole of stdout, trailing whitespace ignored on both sides.
        public var stdout: String?
        public var stdoutContains: String?
        public init(exitCode: Int? = nil, stdout: String? = nil, stdoutContains: String? = nil) {
            self.exitCode = exitCode
            self.stdout = stdout
            self.stdoutContains = stdoutContains
        }
    }

    /// A file written before `setup` (a relative path is under the working directory).
    public struct File: Sendable, Equatable {
        public var path: String
        public var text: String
        public init(path: String, text: String) {
            self.path = path
            self.text = text
        }
    }

    /// The id as text (an integer id in decimal), for messages.
    public var id: String
    /// The id exactly as the task gave it (a string or an integer): result lines carry it unchanged.
    public var idValue: JSONValue
    public var files: [File]
    /// Shell commands run in order before the task; the first that fails makes the task an `error`.
    public var setup: [String]
    public var run: Run
    public var timeoutMs: Int?
    public var expect: Expect?

    public init(id: String, idValue: JSONValue? = nil, files: [File] = [], setup: [String] = [], run: Run,
                timeoutMs: Int? = nil, expect: Expect? = nil) {
        self.id = id
        self.idValue = idValue ?? .string(id)
        self.files = files
        self.setup = setup
        self.run = run
        self.timeoutMs = timeoutMs
        self.expect = expect
    }

    /// What tells tasks apart: the id as JSON, so the integer 7 and the string "7" are two ids.
    public var key: String { Self.key(idValue) }
    public static func key(_ id: JSONValue) -> String { JSONCodec.encode(id) }

    /// Tasks with the same files and setup share one prepared base sandbox;
    /// nil when there is nothing to prepare (the template is the base).
    public var baseKey: String? {
        if files.isEmpty && setup.isEmpty { return nil }
        var o = JSONObject()
        o["files"] = .array(files.map { .array([.string($0.path), .string($0.text)]) })
        o["setup"] = .array(setup.map { .string($0) })
        return JSONCodec.encode(.object(o))
    }

    public static let keys: Set<String> = ["id", "files", "setup", "cmd", "code", "timeoutMs", "expect"]

    /// Parses one task object; errors name the field (`tasks[3].cmd`).
    public static func parse(_ v: JSONValue, at field: String) throws(SandpitError) -> BatchTask {
        func bad(_ k: String, _ why: String) -> SandpitError { SandpitError.invalidParams(k.isEmpty ? field : "\(field).\(k)", why) }
        guard let o = v.objectValue else { throw bad("", "a task must be an object with id and cmd or code") }
        for k in o.keys where !keys.contains(k) { throw bad(k, "unknown field (known: \(keys.sorted().joined(separator: ", ")))") }
        let id: String
        switch o["id"] {
        case .string(let s) where !s.isEmpty && s.utf8.count <= 256: id = s
        case .int(let i): id = String(i)
        default: throw bad("id", "required: an integer, or a non-empty string of at most 256 bytes")
        }
        var files: [File] = []
        if let f = o["files"], f != .null {
            guard let fo = f.objectValue else { throw bad("files", "an object of path → text") }
            for (p, t) in fo {
                guard let text = t.stringValue else { throw bad("files.\(p)", "content must be a string") }
                guard !p.isEmpty, !p.utf8.contains(0) else { throw bad("files", "a path is empty or has a NUL byte") }
                files.append(File(path: p, text: text))
            }
        }
        var setup: [String] = []
        if let s = o["setup"], s != .null {
            switch s {
            case .string(let c): setup = [c]
            case .array(let a):
                for (i, c) in a.enumerated() {
                    guard let c = c.stringValue else { throw bad("setup[\(i)]", "a shell command string") }
                    setup.append(c)
                }
            default: throw bad("setup", "a shell command or an array of them")
            }
        }
        let run: Run
        switch (o["cmd"], o["code"]) {
        case (.string(let s)?, nil): run = .shell(s)
        case (.array(let a)?, nil):
            let argv = a.compactMap(\.stringValue)
            guard argv.count == a.count, let first = argv.first, !first.isEmpty else { throw bad("cmd", "an argv array of strings, or a shell string") }
            run = .argv(argv)
        case (nil, .string(let c)?): run = .python(c)
        case (nil, nil): throw bad("cmd", "one of cmd (shell string or argv) or code (python) is required")
        case (_?, _?): throw bad("code", "give cmd or code, not both")
        default: throw bad(o["cmd"] != nil ? "cmd" : "code", "cmd is a string or an array; code is a string")
        }
        var timeout: Int?
        if let t = o["timeoutMs"], t != .null {
            guard let ms = t.intValue, ms >= 1, ms <= 86_400_000 else { throw bad("timeoutMs", "an integer from 1 to 86400000") }
            timeout = Int(ms)
        }
        var expect: Expect?
        if let e = o["expect"], e != .null {
            guard let eo = e.objectValue else { throw bad("expect", "an object: {exitCode?, stdout?, stdoutContains?}") }
            var x = Expect()
            for (k, v) in eo {
                switch k {
                case "exitCode":
                    guard let c = v.intValue else { throw bad("expect.exitCode", "an integer") }
                    x.exitCode = Int(c)
                case "stdout":
                    guard let s = v.stringValue else { throw bad("expect.stdout", "a string") }
                    x.stdout = s
                case "stdoutContains":
                    guard let s = v.stringValue else { throw bad("expect.stdoutContains", "a string") }
                    x.stdoutContains = s
                default: throw bad("expect.\(k)", "unknown (known: exitCode, stdout, stdoutContains)")
                }
            }
            expect = x
        }
        return BatchTask(id: id, idValue: o["id"], files: files, setup: setup, run: run, timeoutMs: timeout, expect: expect)
    }
}

/// How a batch task ended, as in its result line.
public enum BatchStatus: String, Sendable, CaseIterable {
    /// Exit code 0 (or the expected one), no exception, `expect` met.
    case passed
    /// A non-zero exit, an exception, or `expect` not met (`reason` says which).
    case failed
    case timeout
    case oom
    /// The runtime could not run it (the sandbox did not start, setup failed…).
    case error

    /// The verdict for a command that ran to an end.
    public static func judge(exitCode: Int, signal: Int32?, timedOut: Bool, oomKilled: Bool, stdout: String,
                             expect: BatchTask.Expect?) -> (BatchStatus, reason: String?) {
        if timedOut { return (.timeout, "killed after its time limit") }
        if oomKilled { return (.oom, "killed by the out-of-memory killer at the memory limit") }
        if let s = signal { return (.failed, "killed by signal \(s)") }
        let wantCode = expect?.exitCode ?? 0
        if exitCode != wantCode { return (.failed, "exit code \(exitCode), expected \(wantCode)") }
        if let want = expect?.stdout, trimmedEnd(stdout) != trimmedEnd(want) { return (.failed, "stdout differs from expect.stdout") }
        if let part = expect?.stdoutContains, !stdout.contains(part) { return (.failed, "stdout does not contain expect.stdoutContains") }
        return (.passed, nil)
    }

    static func trimmedEnd(_ s: String) -> Substring {
        var sub = Substring(s)
        while let l = sub.last, l.isWhitespace { sub.removeLast() }
        return sub
    }
}

/// Counts of a batch's results, by status.
public struct BatchTally: Sendable, Equatable {
    public private(set) var counts: [BatchStatus: Int] = [:]
    public private(set) var done = 0
    public init() {}
    public mutating func add(_ s: BatchStatus) {
        counts[s, default: 0] += 1
        done += 1
    }
    public subscript(_ s: BatchStatus) -> Int { counts[s] ?? 0 }
    public var json: JSONObject {
        var o = JSONObject()
        o["done"] = .int(Int64(done))
        for s in BatchStatus.allCases { o[s.rawValue] = .int(Int64(self[s])) }
        return o
    }
}
