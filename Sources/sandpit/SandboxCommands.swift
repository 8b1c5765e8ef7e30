#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import SandpitClient
import SandpitCore
import SandpitDaemon
import SandpitOS

// The docker-shaped commands: run, create, exec, logs, ps, inspect, pause,
// resume, stop, rm, checkpoint, restore, fork. Each maps onto one or a few
// protocol calls; the daemon holds the logic.

/// What `run` and `exec` exit with when the command did not exit by itself
/// (the conventions of `timeout(1)` and of shells).
enum ExitStatus {
    static let sandpitFailed: Int32 = 125
    static let timedOut: Int32 = 124
    static let killed: Int32 = 137

    /// Runs a command's body; a failure of sandpit itself (no daemon, no such
    /// sandbox or template) is said on stderr and exits 125, so it is never
    /// mistaken for the command's own status.
    static func guarding(_ body: () async throws -> Void) async throws {
        do { try await body() } catch let e as ExitCode { throw e } catch let e as CleanExit { throw e } catch let e as ValidationError {
            throw e
        } catch {
            FileHandleStderr.write("sandpit: \(error)\n")
            throw ExitCode(sandpitFailed)
        }
    }

    /// The status for an `exec.run` result, saying on stderr why when the command was ended.
    static func of(_ r: JSONValue, timeoutMs: Int?) -> Int32 {
        if r["spawnError"]?.stringValue != nil {
            FileHandleStderr.write("sandpit: the command could not start: \(r["spawnError"]?.stringValue ?? "")\n")
            return 127
        }
        if r["timedOut"] == true {
            FileHandleStderr.write("sandpit: the command timed out" + (timeoutMs.map { " after \($0) ms" } ?? "") + " and was killed (exit status 124)\n")
            return timedOut
        }
        if r["oomKilled"] == true {
            FileHandleStderr.write("sandpit: the command was killed: out of memory at the sandbox's memory limit (exit status 137)\n")
            return killed
        }
        if let name = r["signal"]?.stringValue {
            let n = Signals.number(name) ?? 9
            let why = r["killedBy"]?.stringValue.map { " (\($0))" } ?? ""
            FileHandleStderr.write("sandpit: the command was killed by \(name)\(why) (exit status \(128 + n))\n")
            return 128 + n
        }
        return Int32(truncatingIfNeeded: r["exitCode"]?.intValue ?? 1)
    }
}

/// The options `run` and `exec` share.
struct CommandOptions: ParsableArguments {
    @Option(help: "Kill the command after this many milliseconds (exit status 124).") var timeoutMs: Int?
    @Option(name: .customShort("e"), help: "Set an environment variable (KEY=VALUE).") var env: [String] = []
    @Option(name: [.customShort("w"), .long], help: "Working directory inside the sandbox.") var workdir: String?
    @Flag(help: "Do not give this process's stdin to the command (by default a pipe or file on stdin is read to its end and given to it).")
    var noStdin = false
    @Flag(help: "Print one JSON object with the result instead of streaming output.") var json = false
    @Flag(name: [.customShort("i"), .long], help: "Keep stdin open: what is typed or piped goes to the command as it comes.") var interactive = false
    @Flag(name: [.customShort("t"), .long], help: "Run the command on a terminal (a PTY in the sandbox): raw keys, window size, Ctrl-C to it.") var tty = false
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (after --).") var command: [String] = []

    /// The command, with `--` dropped; `-h` asks for help, any other option here is a mistake.
    func argv<C: ParsableCommand>(_ cmd: C.Type, example: String) throws -> [String] {
        if let first = command.first, first != "--", first.hasPrefix("-") {
            if first == "-h" || first == "--help" || first == "-help" { throw CleanExit.helpRequest(cmd) }
            throw ValidationError("unknown option '\(first)' (see --help; the command goes after --, e.g. \(example))")
        }
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        guard !argv.isEmpty else { throw ValidationError("give a command, e.g. \(example)") }
        return argv
    }

    /// The `exec.run` params for this command.
    func params(sandbox: String, argv: [String], forwardStdin: Bool = true) throws -> JSONObject {
        var p: JSONObject = ["sandboxId": .string(sandbox), "cmd": .array(argv.map { .string($0) })]
        var e = JSONObject()
        for kv in env {
            guard let eq = kv.firstIndex(of: "="), eq != kv.startIndex else { throw ValidationError("-e takes KEY=VALUE, got \(kv)") }
            e[String(kv[..<eq])] = .string(String(kv[kv.index(after: eq)...]))
        }
        if e.count > 0 { p["env"] = .object(e) }
        if let workdir { p["cwd"] = .string(workdir) }
        if let t = timeoutMs { p["timeoutMs"] = .int(Int64(t)) }
        if forwardStdin && !noStdin, let input = try StdinForward.read() { p["stdinBase64"] = .string(Base64.encode(input)) }
        return p
    }

    /// Runs the command, streaming its output to this process's stdout and stderr.
    func run(_ c: any RPCClient, sandbox: String, argv: [String]) async throws -> JSONValue {
        if interactive || tty { return try await Interactive.run(c, sandbox: sandbox, argv: argv, tty: tty, options: self) }
        let json = self.json
        return try await c.call("exec.run", try params(sandbox: sandbox, argv: argv)) { method, p in
            guard method == "exec.output", !json else { return }
            Console.write(outputBytes(p), fd: p["stream"]?.stringValue == "stderr" ? 2 : 1)
        }
    }
}

/// This process's stdin, for the command: read to its end when it is a pipe
/// or a file (`echo x | sandpit run -- cat`); a terminal, /dev/null or a
/// socket is not read (nothing would end it).
enum StdinForward {
    static let limit = 8 << 20

    static func read() throws -> [UInt8]? {
        var st = stat()
        guard fstat(0, &st) == 0 else { return nil }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFIFO || kind == S_IFREG else { return nil }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buf[0..<n]
            if out.count > limit {
                throw ValidationError("stdin is over \(limit >> 20) MiB: copy large inputs in with `sandpit cp`, or pass --no-stdin")
            }
        }
        return out
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a sandbox, run a command in it with live output, delete it, and exit with the command's status.",
        discussion: """
            Like `docker run --rm`: the sandbox is deleted when the command ends (--keep keeps it and prints its id \
            on stderr). A pipe or file on stdin is given to the command (`echo x | sandpit run -- cat`).

            Exit status: the command's own; 124 when it timed out (--timeout-ms), 137 when it was killed for memory \
            (or by SIGKILL), 128+N when killed by signal N, 125 when sandpit itself failed. Why it was ended is \
            printed on stderr.
            """)

    @Option(help: "Template to create the sandbox from.") var template = "default"
    @Option(help: "Policy to run under.") var policy = "default"
    @Option(help: "A name for the sandbox (its metadata `name`).") var name: String?
    @Flag(help: "Keep the sandbox after the command (its id goes to stderr).") var keep = false
    @Flag(help: "Delete the sandbox after the command (the default; for docker habits).") var rm = false
    @OptionGroup var command: CommandOptions
    @OptionGroup var client: ClientOptions

    func validate() throws { _ = try command.argv(Self.self, example: "sandpit run -- python3 -c 'print(42)'") }

    func run() async throws { try await ExitStatus.guarding { try await body() } }

    func body() async throws {
        let argv = try command.argv(Self.self, example: "sandpit run -- python3 -c 'print(42)'")
        if keep && rm { throw ValidationError("give --keep or --rm, not both") }
        if keep && client.socket == nil { throw ValidationError("--keep needs a daemon (--socket or SANDPIT_SOCKET): without one the sandbox ends with this process") }
        let c = try await client.connect()
        var create: JSONObject = ["template": .string(template), "policy": .string(policy)]
        if let name { create["metadata"] = ["name": .string(name)] }
        let status: Int32
        do {
            let sb = try await c.call("sandbox.create", create)
            let id = sb["sandboxId"]?.stringValue ?? ""
            let result = try await Interrupt.race { try await command.run(c, sandbox: id, argv: argv) }
            if keep { FileHandleStderr.write(id + "\n") } else { _ = try? await c.call("sandbox.delete", ["sandboxId": .string(id)]) }
            if let r = result {
                if command.json { print(JSONCodec.encode(.object(["sandbox": sb, "result": r]))) }
                status = ExitStatus.of(r, timeoutMs: command.timeoutMs)
            } else {
                status = 130
            }
        } catch {
            await c.close()
            throw error
        }
        await c.close()
        throw ExitCode(status)
    }
}

/// Races `body` against Ctrl-C / SIGTERM: nil when interrupted.
enum Interrupt {
    static func race(_ body: @escaping @Sendable () async throws -> JSONValue) async throws -> JSONValue? {
        let interrupted = SignalWatcher([SIGINT, SIGTERM])
        defer { interrupted.stop() }
        return try await withThrowingTaskGroup(of: JSONValue?.self) { g in
            g.addTask { try await body() }
            g.addTask { _ = await interrupted.next(); return nil }
            defer { g.cancelAll() }
            return try await g.next()!
        }
    }
}

struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in an existing sandbox, with live output, and exit with its status.",
        discussion: "Exit statuses as for `sandpit run`. A pipe or file on stdin is given to the command.")
    @Argument(help: "Sandbox id.") var sandboxId: String
    @OptionGroup var command: CommandOptions
    @OptionGroup var client: ClientOptions

    func validate() throws { _ = try command.argv(Self.self, example: "sandpit exec SANDBOX -- ls -la") }

    func run() async throws { try await ExitStatus.guarding { try await body() } }

    func body() async throws {
        let argv = try command.argv(Self.self, example: "sandpit exec SANDBOX -- ls -la")
        let c = try client.connectDaemon("exec")
        let r = try await Interrupt.race { try await command.run(c, sandbox: sandboxId, argv: argv) }
        await c.close()
        guard let r else { throw ExitCode(130) }
        if command.json { print(JSONCodec.encode(r)) }
        throw ExitCode(ExitStatus.of(r, timeoutMs: command.timeoutMs))
    }
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a sandbox and print its id.")
    @Option(help: "Template to create the sandbox from.") var template = "default"
    @Option(help: "Policy to run under.") var policy = "default"
    @Option(help: "A name for the sandbox (its metadata `name`).") var name: String?
    @Option(name: .customLong("label"), help: "Metadata KEY=VALUE (repeatable).") var labels: [String] = []
    @Flag(help: "Print the sandbox as JSON instead of its id.") var json = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        var meta = JSONObject()
        for kv in labels {
            guard let eq = kv.firstIndex(of: "="), eq != kv.startIndex else { throw ValidationError("--label takes KEY=VALUE, got \(kv)") }
            meta[String(kv[..<eq])] = .string(String(kv[kv.index(after: eq)...]))
        }
        if let name { meta["name"] = .string(name) }
        let c = try client.connectDaemon("create")
        var p: JSONObject = ["template": .string(template), "policy": .string(policy)]
        if meta.count > 0 { p["metadata"] = .object(meta) }
        let sb = try await c.call("sandbox.create", p)
        await c.close()
        print(json ? JSONCodec.encode(sb) : sb["sandboxId"]?.stringValue ?? "")
    }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the output of a sandbox's command (the latest one unless EXEC is given); -f follows it until it ends.")
    @Argument(help: "Sandbox id.") var sandboxId: String
    @Argument(help: "Exec id (default: the sandbox's latest command).") var execId: String?
    @Flag(name: [.customShort("f"), .long], help: "Keep printing output as it comes until the command ends.") var follow = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.connectDaemon("logs")
        defer { Task { await c.close() } }
        var exec = execId
        if exec == nil {
            let r = try await c.call("exec.list", ["sandboxId": .string(sandboxId), "limit": 1])
            exec = r["execs"]?.arrayValue?.first?["execId"]?.stringValue
            guard exec != nil else { throw ValidationError("sandbox \(sandboxId) has run no command yet") }
        }
        var since: Int64 = 0
        while true {
            let r = try await c.call("exec.logs", ["sandboxId": .string(sandboxId), "execId": .string(exec!), "sinceSeq": .int(since)])
            for ch in r["chunks"]?.arrayValue ?? [] {
                Console.write(outputBytes(ch), fd: ch["stream"]?.stringValue == "stderr" ? 2 : 1)
                since = max(since, (ch["seq"]?.intValue ?? since) + 1)
            }
            if r["expired"] == true { FileHandleStderr.write("sandpit: the output of \(exec!) is no longer kept (the daemon restarted since)\n") }
            if !follow || r["done"] == true { return }
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}

struct Ps: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List sandboxes: running and paused ones, or all with -a.",
        discussion: "DELETES says when an idle sandbox will be deleted by its policy's retention (`-` never).")
    @Flag(name: [.customShort("a"), .long], help: "Also list hibernated and stopped sandboxes.") var all = false
    @Flag(name: [.customShort("q"), .long], help: "Print only ids.") var quiet = false
    @Option(help: "Only sandboxes in this state.") var state: String?
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try await client.connect()
        var list: [JSONValue] = []
        var cursor: String?
        repeat {
            var p: JSONObject = ["limit": 1000]
            if let state { p["state"] = .string(state) }
            if let cursor { p["cursor"] = .string(cursor) }
            let r = try await c.call("sandbox.list", p)
            list += r["sandboxes"]?.arrayValue ?? []
            cursor = r["nextCursor"]?.stringValue
        } while cursor != nil
        await c.close()
        if !all && state == nil { list = list.filter { ["starting", "running", "paused"].contains($0["state"]?.stringValue ?? "") } }
        if json { print(JSONCodec.encode(.array(list))); return }
        if quiet { for s in list { print(s["sandboxId"]?.stringValue ?? "") }; return }
        func dur(_ ms: Int64) -> String {
            ms < 1000 ? "0s" : ms < 60_000 ? "\(ms / 1000)s" : ms < 3_600_000 ? "\(ms / 60_000)m" : ms < 172_800_000 ? "\(ms / 3_600_000)h" : "\(ms / 86_400_000)d"
        }
        func mem(_ b: Int64?) -> String { b.map { "\($0 >> 20)M" } ?? "-" }
        let now = Clock.nowMs()
        print("SANDBOX".column(26) + "STATE".column(11) + "IDLE".column(6) + "MEMORY".column(8) + "TEMPLATE".column(10)
              + "POLICY".column(9) + "STEP".column(6) + "DELETES".column(9) + "NAME".column(12) + "CREATED")
        for s in list {
            let deletes = s["deleteAt"]?.stringValue.flatMap(Timestamp.parseMs).map { "in " + dur(max(0, $0 - now)) } ?? "-"
            print((s["sandboxId"]?.stringValue ?? "").column(26) + (s["state"]?.stringValue ?? "").column(11)
                  + (s["idleMs"]?.intValue.map(dur) ?? "-").column(6) + mem(s["memoryBytes"]?.intValue).column(8)
                  + (s["template"]?.stringValue ?? "").column(10) + (s["policy"]?.stringValue ?? "").column(9)
                  + String(s["step"]?.intValue ?? 0).column(6) + deletes.column(9)
                  + (s["metadata"]?["name"]?.stringValue ?? "-").column(12) + (s["createdAt"]?.stringValue ?? ""))
        }
    }
}

struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print sandboxes as JSON (state, limits, step, metadata, retention).")
    @Argument(help: "Sandbox ids.") var ids: [String]
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.connectDaemon("inspect")
        var out: [JSONValue] = []
        var failed = false
        for id in ids {
            do { out.append(try await c.call("sandbox.get", ["sandboxId": .string(id)])) } catch {
                FileHandleStderr.write("sandpit inspect \(id): \(error)\n")
                failed = true
            }
        }
        await c.close()
        print(JSONCodec.encode(.array(out)))
        if failed { throw ExitCode(1) }
    }
}

/// A command that calls one method for each sandbox id and prints the id.
protocol EachSandboxCommand: AsyncParsableCommand {
    var ids: [String] { get }
    var client: ClientOptions { get }
    static var method: String { get }
}

extension EachSandboxCommand {
    func run() async throws {
        let c = try client.connectDaemon(Self.configuration.commandName ?? "")
        var failed = false
        for id in ids {
            do {
                _ = try await c.call(Self.method, ["sandboxId": .string(id)])
                print(id)
            } catch {
                FileHandleStderr.write("sandpit \(Self.configuration.commandName ?? ""): \(id): \(error)\n")
                failed = true
            }
        }
        await c.close()
        if failed { throw ExitCode(1) }
    }
}

struct Pause: EachSandboxCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Freeze sandboxes' processes (memory kept; resumed by the next request).")
    static let method = "sandbox.pause"
    @Argument(help: "Sandbox ids.") var ids: [String]
    @OptionGroup var client: ClientOptions
}

struct Resume: EachSandboxCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Wake paused or hibernated sandboxes.")
    static let method = "sandbox.resume"
    @Argument(help: "Sandbox ids.") var ids: [String]
    @OptionGroup var client: ClientOptions
}

struct Stop: EachSandboxCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Hibernate sandboxes: their processes end, their files and checkpoints stay (resume wakes them).")
    static let method = "sandbox.hibernate"
    @Argument(help: "Sandbox ids.") var ids: [String]
    @OptionGroup var client: ClientOptions
}

struct Rm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete sandboxes (their processes, files and checkpoints).",
        discussion: "A running or paused sandbox is deleted only with -f, as with `docker rm`; stop it first otherwise.")
    @Argument(help: "Sandbox ids.") var ids: [String]
    @Flag(name: [.customShort("f"), .long], help: "Delete running sandboxes too.") var force = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try await client.connect()
        var failed = false
        for id in ids {
            do {
                if !force {
                    let st = try await c.call("sandbox.get", ["sandboxId": .string(id)])["state"]?.stringValue ?? ""
                    if ["starting", "running", "paused"].contains(st) {
                        throw ValidationError("it is \(st): stop it first (sandpit stop \(id)) or use rm -f")
                    }
                }
                _ = try await c.call("sandbox.delete", ["sandboxId": .string(id)])
                print(id)
            } catch {
                FileHandleStderr.write("sandpit rm \(id): \(error)\n")
                failed = true
            }
        }
        await c.close()
        if failed { throw ExitCode(1) }
    }
}

struct CheckpointCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "checkpoint", abstract: "List or take a sandbox's checkpoints.",
                                                    subcommands: [List.self, Take.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List a sandbox's checkpoints: one per step.")
        @Argument(help: "Sandbox id.") var sandboxId: String
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try client.connectDaemon("checkpoint ls")
            let r = try await c.call("checkpoint.list", ["sandboxId": .string(sandboxId)])
            await c.close()
            let list = r["checkpoints"]?.arrayValue ?? []
            if json { print(JSONCodec.encode(.array(list))); return }
            print("STEP".column(6) + "CHECKPOINT".column(26) + "CHANGES".column(16) + "CREATED".column(26) + "NAME")
            for ck in list {
                let d = ck["diff"]
                let changes = "+\(d?["added"]?.intValue ?? 0) ~\(d?["modified"]?.intValue ?? 0) -\(d?["deleted"]?.intValue ?? 0)"
                print(String(ck["step"]?.intValue ?? 0).column(6) + (ck["checkpointId"]?.stringValue ?? "").column(26) + changes.column(16)
                      + (ck["createdAt"]?.stringValue ?? "").column(26) + (ck["name"]?.stringValue ?? ""))
            }
        }
    }

    struct Take: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Checkpoint a sandbox now and print the new step.")
        @Argument(help: "Sandbox id.") var sandboxId: String
        @Option(help: "A name for the checkpoint.") var name: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try client.connectDaemon("checkpoint create")
            var p: JSONObject = ["sandboxId": .string(sandboxId)]
            if let name { p["name"] = .string(name) }
            let r = try await c.call("checkpoint.create", p)
            await c.close()
            print("step \(r["step"]?.intValue ?? 0) \(r["checkpointId"]?.stringValue ?? "")")
        }
    }
}

/// `--step N` or `--checkpoint ID`, for restore and fork.
struct StepOptions: ParsableArguments {
    @Option(help: "The step to use.") var step: Int?
    @Option(help: "The checkpoint id to use.") var checkpoint: String?

    func apply(to p: inout JSONObject, required: Bool) throws {
        switch (step, checkpoint) {
        case (let s?, nil): p["step"] = .int(Int64(s))
        case (nil, let c?): p["checkpointId"] = .string(c)
        case (nil, nil): if required { throw ValidationError("give --step N or --checkpoint ID") }
        default: throw ValidationError("give --step or --checkpoint, not both")
        }
    }
}

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Roll a sandbox back to a checkpoint; prints what was restored and what was lost.")
    @Argument(help: "Sandbox id.") var sandboxId: String
    @OptionGroup var at: StepOptions
    @OptionGroup var client: ClientOptions

    func run() async throws {
        var p: JSONObject = ["sandboxId": .string(sandboxId)]
        try at.apply(to: &p, required: true)
        let c = try client.connectDaemon("restore")
        let r = try await c.call("sandbox.restore", p)
        await c.close()
        let restored = (r["restored"]?.arrayValue ?? []).compactMap(\.stringValue)
        let lost = (r["lost"]?.arrayValue ?? []).compactMap(\.stringValue)
        print("restored \(sandboxId) to step \(r["checkpoint"]?["step"]?.intValue ?? r["step"]?.intValue ?? 0): "
              + (restored.isEmpty ? "nothing" : restored.joined(separator: ", ")) + (lost.isEmpty ? "" : "; lost: " + lost.joined(separator: ", ")))
    }
}

struct Fork: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Copy a sandbox as it was at a checkpoint (default: its latest) into new sandboxes; prints their ids.")
    @Argument(help: "Sandbox id.") var sandboxId: String
    @OptionGroup var at: StepOptions
    @Option(help: "How many copies.") var count = 1
    @OptionGroup var client: ClientOptions

    func run() async throws {
        var p: JSONObject = ["sandboxId": .string(sandboxId), "count": .int(Int64(count))]
        try at.apply(to: &p, required: false)
        let c = try client.connectDaemon("fork")
        let r = try await c.call("sandbox.fork", p)
        await c.close()
        for s in r["sandboxes"]?.arrayValue ?? [] { print(s["sandboxId"]?.stringValue ?? "") }
    }
}

struct Completion: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a shell completion script.",
        discussion: "bash: `source <(sandpit completion bash)`; zsh: `sandpit completion zsh > \"${fpath[1]}/_sandpit\"`; fish: `sandpit completion fish > ~/.config/fish/completions/sandpit.fish`.")
    @Argument(help: "bash, zsh or fish.") var shell: String

    func run() throws {
        guard let s = CompletionShell(rawValue: shell) else { throw ValidationError("the shell must be bash, zsh or fish") }
        print(Sandpit.completionScript(for: s))
    }
}
