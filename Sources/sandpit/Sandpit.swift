#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import Logging
import SandpitCore
import SandpitDaemon
import SandpitEngine
import SandpitOS
import SandpitProtocol

@main
struct Sandpit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandpit",
        abstract: "A local code-interpreter runtime: isolated, checkpointed sandboxes for AI agents.",
        version: Engine.version,
        subcommands: [Serve.self, Run.self, Exec.self, Batch.self, MCPServe.self, Ps.self, Rm.self, Expose.self, Info.self, PolicyCommand.self, StorageCommand.self, TemplateCommand.self])
}

struct EngineOptions: ParsableArguments {
    @Option(help: "Data directory (catalog, layers, sandboxes). Env: SANDPIT_DATA_DIR.")
    var dataDir: String = ProcessEnv.get("SANDPIT_DATA_DIR") ?? "/var/lib/sandpit"

    @Option(help: "Where write layers live: loop (ext4 image, default) or dir.")
    var storage: String = "loop"

    @Option(help: "Size of the sparse storage image in GiB (loop storage).")
    var storageGib: Int = 32

    @Option(help: "Directory of policy files (default: the Policies/ directory shipped with sandpit).")
    var policies: String?

    @Option(help: "Maximum number of live sandboxes; more wait in a fair queue (idle ones are hibernated first).")
    var maxSandboxes: Int = 256

    @Option(help: "Memory budget in GiB: the sum of live sandboxes' policy memory limits (default: none).")
    var memoryBudgetGib: Int?

    @Option(help: "Maximum concurrent execs across all sandboxes (default: none).")
    var maxExecs: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "warning"

    @Option(help: "Sandboxes kept started ahead of demand (default template and policy), so sandbox.create returns at once. 0 disables. Ignored without a daemon.")
    var warmPool: Int = 2

    @Option(help: "Sandboxes of each PRELOAD template kept started, their interpreters forked from the template's zygote (which imported its modules once), so the first cell does not wait for them. 0 disables warm templates. Ignored without a daemon.")
    var warmTemplatePool: Int = 1

    func makeLogger() -> Logger {
        var l = Logger(label: "sandpit")
        l.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        return l
    }

    func engineConfig(warmPool pool: Int? = nil) throws -> EngineConfig {
        guard let mode = StorageMode(rawValue: storage) else { throw ValidationError("--storage must be loop or dir") }
        let exe = Executable.directory()
        let agent = ProcessEnv.get("SANDPIT_AGENT") ?? Executable.findAgent(in: exe)
        var cfg = EngineConfig(dataDir: dataDir, storageMode: mode, storageBytes: Int64(storageGib) << 30, agentPath: agent,
                            policiesDir: policies ?? Executable.findPolicies(), maxSandboxes: maxSandboxes, warmPool: max(0, pool ?? warmPool))
        cfg.warmTemplatePool = pool == 0 ? 0 : max(0, warmTemplatePool)
        cfg.memoryBudgetBytes = memoryBudgetGib.map { Int64($0) << 30 }
        cfg.maxExecs = maxExecs
        return cfg
    }

    /// An in-process engine for one CLI command: no warm pool (nothing would use it).
    func makeService(logger: Logger) throws -> RPCService {
        let engine = try Engine(config: try engineConfig(warmPool: 0), logger: logger)
        return RPCService(engine: engine, logger: logger)
    }
}

struct ClientOptions: ParsableArguments {
    @Option(name: .customLong("socket"), help: "Talk to the daemon on this Unix socket (env: SANDPIT_SOCKET). Without it the engine runs in-process.")
    var socketPath: String?

    @OptionGroup var engine: EngineOptions

    var socket: String? {
        if let s = socketPath, !s.isEmpty { return s }
        if let s = ProcessEnv.get("SANDPIT_SOCKET"), !s.isEmpty { return s }
        return nil
    }

    func connect() async throws -> any RPCClient {
        if let s = socket { return try SocketClient(path: s) }
        LoggingSystem.bootstrapOnce()
        return InProcessClient(service: try engine.makeService(logger: engine.makeLogger()))
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon: JSON-RPC 2.0 lines on stdin/stdout, or on a Unix socket with --socket.",
        discussion: """
            On stdin EOF (stdio mode) or SIGTERM/SIGINT the daemon finishes in-flight requests it can, then \
            deletes its sandboxes; with --keep their files are kept and they are listed as stopped.
            """)

    @Option(help: "Listen on this Unix socket (mode 0600) instead of stdin/stdout.")
    var socket: String?

    @Option(help: "Octal mode of the socket, e.g. 0666 to let other users connect (each sees only its own sandboxes).")
    var socketMode: String = "0600"

    @Option(help: "File holding the admin token; a client that sends it with server.auth sees every sandbox. Env: SANDPIT_ADMIN_TOKEN.")
    var adminTokenFile: String?

    @Flag(help: "On shutdown keep sandboxes' files (listed as stopped) instead of deleting them.")
    var keep = false

    @Option(help: "Maximum request line in bytes.")
    var maxLineBytes: Int = 16 << 20

    @OptionGroup var engine: EngineOptions

    func run() async throws {
        // Before any thread exists: whatever the caller's umask, nothing the
        // daemon creates is group- or world-writable (the socket included,
        // until it gets its configured mode).
        umask(umask(0o022) | 0o022)
        LoggingSystem.bootstrapOnce()
        var log = engine.makeLogger()
        if engine.logLevel == "warning" { log.logLevel = .info }
        let logger = log
        let socketPath = socket
        let eng = try Engine(config: try engine.engineConfig(), logger: logger)
        guard let mode = mode_t(socketMode, radix: 8), mode <= 0o777 else { throw ValidationError("--socket-mode must be octal, like 0600") }
        var token = ProcessEnv.get("SANDPIT_ADMIN_TOKEN")
        if let f = adminTokenFile {
            do { token = try FS.readText(f).split(whereSeparator: \.isWhitespace).first.map(String.init) } catch {
                throw ValidationError("cannot read --admin-token-file \(f): \(error)")
            }
        }
        if let t = token, t.count < 16 { throw ValidationError("the admin token must be at least 16 characters") }
        let service = RPCService(engine: eng, limits: .init(maxLineBytes: maxLineBytes), adminToken: token, logger: logger)
        logger.info("sandpit daemon started", metadata: ["dataDir": "\(engine.dataDir)", "cgroup": "\(eng.cgroupVersion.rawValue)", "storage": "\(eng.storage.mode.rawValue)"])
        let signals = SignalWatcher([SIGTERM, SIGINT])
        let keep = self.keep
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    if let path = socketPath {
                        try await Transports.serveSocket(path: path, service: service, logger: logger, mode: mode)
                    } else {
                        try await Transports.serveStdio(service: service, logger: logger)
                    }
                } catch is CancellationError {
                    // Stopped by a signal: the ordinary way out, not an error.
                } catch {
                    logger.error("\(error)")
                }
            }
            group.addTask {
                let s = await signals.next()
                if s > 0 { logger.info("shutting down", metadata: ["signal": .string(Signals.name(s))]) }
            }
            _ = await group.next()
            group.cancelAll()
            signals.stop()
        }
        await eng.shutdown(keep: keep)
        logger.info("sandpit daemon stopped")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a sandbox, run a command in it with live output, delete it, and exit with the command's status.")

    @Option(help: "Template to create the sandbox from.") var template = "default"
    @Option(help: "Policy to run under.") var policy = "default"
    @Option(help: "Kill the command after this many milliseconds.") var timeoutMs: Int?
    @Option(name: .customShort("e"), help: "Set an environment variable (KEY=VALUE).") var env: [String] = []
    @Option(help: "Working directory inside the sandbox.") var workdir: String?
    @Flag(help: "Print one JSON object with the result instead of streaming output.") var json = false
    @OptionGroup var client: ClientOptions
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (after --).") var command: [String] = []

    func run() async throws {
        let cmd = command.first == "--" ? Array(command.dropFirst()) : command
        guard !cmd.isEmpty else { throw ValidationError("give a command after --, e.g. sandpit run -- python3 -c 'print(42)'") }
        let c = try await client.connect()
        var code: Int32 = 0
        do {
            let sb = try await c.call("sandbox.create", ["template": .string(template), "policy": .string(policy)])
            let id = sb["sandboxId"]?.stringValue ?? ""
            let interrupted = SignalWatcher([SIGINT, SIGTERM])
            let result = try await withThrowingTaskGroup(of: JSONValue?.self) { g in
                g.addTask { try await execCommand(c, sandbox: id, cmd: cmd, env: env, cwd: workdir, timeoutMs: timeoutMs, json: json) }
                g.addTask { _ = await interrupted.next(); return nil }
                defer { g.cancelAll() }
                return try await g.next()!
            }
            _ = try? await c.call("sandbox.delete", ["sandboxId": .string(id)])
            if let r = result {
                code = Int32(r["exitCode"]?.intValue ?? 1)
                if json { print(JSONCodec.encode(.object(["sandbox": sb, "result": r]))) }
            } else {
                code = 130
            }
        } catch {
            await c.close()
            throw error
        }
        await c.close()
        throw ExitCode(code)
    }
}

/// Runs one command and streams its output to this process's stdout/stderr.
func execCommand(_ c: any RPCClient, sandbox: String, cmd: [String], env: [String], cwd: String?, timeoutMs: Int?, json: Bool) async throws -> JSONValue {
    var params: JSONObject = ["sandboxId": .string(sandbox), "cmd": .array(cmd.map { .string($0) })]
    var e = JSONObject()
    for kv in env {
        guard let eq = kv.firstIndex(of: "=") else { throw ValidationError("-e takes KEY=VALUE, got \(kv)") }
        e[String(kv[..<eq])] = .string(String(kv[kv.index(after: eq)...]))
    }
    if e.count > 0 { params["env"] = .object(e) }
    if let cwd { params["cwd"] = .string(cwd) }
    if let t = timeoutMs { params["timeoutMs"] = .int(Int64(t)) }
    return try await c.call("exec.run", params) { method, p in
        guard method == "exec.output", !json else { return }
        Console.write(outputBytes(p), fd: p["stream"]?.stringValue == "stderr" ? 2 : 1)
    }
}

struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a command in an existing sandbox (needs a daemon: --socket or SANDPIT_SOCKET).")
    @Argument(help: "Sandbox id.") var sandboxId: String
    @Option(help: "Kill the command after this many milliseconds.") var timeoutMs: Int?
    @Option(name: .customShort("e"), help: "Set an environment variable (KEY=VALUE).") var env: [String] = []
    @Option(help: "Working directory inside the sandbox.") var workdir: String?
    @Flag(help: "Print the result as JSON.") var json = false
    @OptionGroup var client: ClientOptions
    @Argument(parsing: .captureForPassthrough, help: "The command (after --).") var command: [String] = []

    func run() async throws {
        let cmd = command.first == "--" ? Array(command.dropFirst()) : command
        guard !cmd.isEmpty else { throw ValidationError("give a command after --") }
        guard client.socket != nil else { throw ValidationError("sandpit exec needs a running daemon: pass --socket PATH or set SANDPIT_SOCKET") }
        let c = try await client.connect()
        let r = try await execCommand(c, sandbox: sandboxId, cmd: cmd, env: env, cwd: workdir, timeoutMs: timeoutMs, json: json)
        await c.close()
        if json { print(JSONCodec.encode(r)) }
        throw ExitCode(Int32(r["exitCode"]?.intValue ?? 1))
    }
}

struct Ps: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List sandboxes.")
    @Option(help: "Only sandboxes in this state.") var state: String?
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try await client.connect()
        var all: [JSONValue] = []
        var cursor: String?
        repeat {
            var p: JSONObject = ["limit": 1000]
            if let state { p["state"] = .string(state) }
            if let cursor { p["cursor"] = .string(cursor) }
            let r = try await c.call("sandbox.list", p)
            all += r["sandboxes"]?.arrayValue ?? []
            cursor = r["nextCursor"]?.stringValue
        } while cursor != nil
        await c.close()
        if json { print(JSONCodec.encode(.array(all))); return }
        func idle(_ ms: Int64?) -> String {
            guard let ms else { return "-" }
            return ms < 1000 ? "0s" : ms < 60_000 ? "\(ms / 1000)s" : ms < 3_600_000 ? "\(ms / 60_000)m" : "\(ms / 3_600_000)h"
        }
        func mem(_ b: Int64?) -> String { b.map { "\($0 >> 20)M" } ?? "-" }
        print("SANDBOX".column(17) + "STATE".column(11) + "IDLE".column(6) + "MEMORY".column(8) + "TEMPLATE".column(10) + "POLICY".column(9) + "STEP".column(6) + "CREATED")
        for s in all {
            print((s["sandboxId"]?.stringValue ?? "").column(17) + (s["state"]?.stringValue ?? "").column(11) + idle(s["idleMs"]?.intValue).column(6)
                  + mem(s["memoryBytes"]?.intValue).column(8) + (s["template"]?.stringValue ?? "").column(10)
                  + (s["policy"]?.stringValue ?? "").column(9) + String(s["step"]?.intValue ?? 0).column(6) + (s["createdAt"]?.stringValue ?? ""))
        }
    }
}

struct Rm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete sandboxes (kills their processes, removes their files).")
    @Argument(help: "Sandbox ids.") var ids: [String]
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try await client.connect()
        var failed = false
        for id in ids {
            do {
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

struct Info: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show server.info as JSON.")
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try await client.connect()
        let r = try await c.call("server.info")
        await c.close()
        print(JSONCodec.encode(r))
    }
}

struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "policy", abstract: "Inspect policies.",
                                                    subcommands: [Show.self, List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the policies in the policies directory.")
        @Option(help: "Directory of policy files.") var policies: String?
        func run() async throws {
            let store = try PolicyStore(directory: policies ?? Executable.findPolicies())
            for (name, p) in store.policies.sorted(by: { $0.key < $1.key }) {
                print(name + String(repeating: " ", count: max(1, 10 - name.count)) + "[\(p.purpose.rawValue)] " + p.description)
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a policy compiled for this host: the ordered set-up plan a sandbox goes through.")
        @Argument(help: "Policy name.") var name = "default"
        @Option(help: "Directory of policy files.") var policies: String?
        @Flag(help: "Print JSON.") var json = false
        @Flag(help: "Also list every seccomp rule with its syscall number.") var syscalls = false

        func run() async throws {
            let store = try PolicyStore(directory: policies ?? Executable.findPolicies())
            let policy = try store.policy(name)
            let host = Engine.hostFacts(cgroup: Cgroups.detect(prefix: "sandpit").version, ids: EngineConfig.defaultIDs)
            let plan = SandboxPlan.compile(policy, host: host)
            if json { print(JSONCodec.encode(plan.json)); return }
            print("policy \(policy.name) [\(policy.purpose.rawValue)]" + (policy.description.isEmpty ? "" : ": " + policy.description))
            print(plan.text)
            if syscalls && policy.seccomp {
                print("\nseccomp rules (\(host.seccompArch)):")
                for r in Engine.seccompRules { print("  \(r.name) (\(r.nr)) -> \(r.action)") }
            }
        }
    }
}

struct StorageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "storage",
        abstract: "Show the store holding sandbox disks and checkpoints: size, use, whether clones are by reference.")
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try await client.connect()
        let r = try await c.call("storage.info")
        await c.close()
        if json { print(JSONCodec.encode(r)); return }
        func gib(_ v: JSONValue?) -> String {
            let tenths = Int(((Double(v?.intValue ?? 0) / Double(1 << 30)) * 10).rounded())
            return "\(tenths / 10).\(tenths % 10) GiB"
        }
        print("store     \(r["root"]?.stringValue ?? "?") (\(r["mode"]?.stringValue ?? "?"), reflink \(r["reflink"] == true ? "yes" : "no: checkpoints and forks copy data"))")
        print("used      \(gib(r["usedBytes"])) of \(gib(r["totalBytes"])), \(gib(r["freeBytes"])) free")
        print("sandboxes \(r["sandboxDirs"]?.intValue ?? 0) with files on the store")
        print("layers    \(r["layers"]?.intValue ?? 0) template layers, \(gib(r["layerBytes"]))")
    }
}
