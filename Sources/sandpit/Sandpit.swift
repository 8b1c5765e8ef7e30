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
import SandpitClient
import SandpitProtocol

@main
struct Sandpit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandpit",
        abstract: "A local code-interpreter runtime: isolated, checkpointed sandboxes for AI agents.",
        discussion: """
            Commands about sandboxes that outlive them (create, exec, logs, cp, inspect, pause, resume, stop, \
            checkpoint, restore, fork, expose) talk to a daemon on --socket or SANDPIT_SOCKET; run, ps, rm, \
            info, template, storage and batch also work without one, with the engine in-process (as root, or rootless as a user).
            """,
        version: Engine.version,
        subcommands: [Serve.self, Run.self, Create.self, Exec.self, Logs.self, Copy.self, Ps.self, Inspect.self,
                      Pause.self, Resume.self, Stop.self, Rm.self, Attach.self, CheckpointCommand.self, Restore.self, Fork.self,
                      Expose.self, Batch.self, MCPServe.self, TemplateCommand.self, PolicyCommand.self, StorageCommand.self,
                      Info.self, Doctor.self, Completion.self])
}

struct EngineOptions: ParsableArguments {
    @Option(help: "Data directory (catalog, layers, sandboxes). Env: SANDPIT_DATA_DIR. Default: /var/lib/sandpit as root, else $XDG_DATA_HOME/sandpit or ~/.local/share/sandpit.")
    var dataDir: String = ProcessEnv.get("SANDPIT_DATA_DIR") ?? Rootless.defaultDataDir

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

    @Option(help: "MiB of output finished commands leave for exec.logs, across all sandboxes (in the data dir past 256 KiB per command); past it the oldest are forgotten (their summary stays).")
    var outputBudgetMib: Int = 256

    @Option(help: "A registry (HOST:PORT) that template builds may pull FROM over plain HTTP instead of HTTPS; repeatable. Only for registries on a network you trust.")
    var insecureRegistry: [String] = []

    @Option(help: "HOST[:PORT]=FILE: trust the CAs in this PEM file (instead of the system's) for that registry; repeatable.")
    var registryCa: [String] = []

    @Option(help: "HOST[:PORT]=USER:PASSWORD: credentials for a registry; repeatable. Otherwise they are read from the daemon user's ~/.docker/config.json (auths).")
    var registryAuth: [String] = []

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
        cfg.finishedOutputBudgetBytes = max(16, outputBudgetMib) << 20
        cfg.registries.insecure = Set(insecureRegistry)
        for a in registryCa {
            guard let eq = a.firstIndex(of: "="), eq != a.startIndex else { throw ValidationError("--registry-ca takes HOST[:PORT]=FILE, not \(a)") }
            cfg.registries.caFiles[String(a[..<eq])] = String(a[a.index(after: eq)...])
        }
        for a in registryAuth {
            guard let (host, c) = RegistryCredentials.parse(a) else { throw ValidationError("--registry-auth takes HOST[:PORT]=USER:PASSWORD") }
            cfg.registries.auth[host] = c
        }
        cfg.registries.dockerConfig = (ProcessEnv.get("DOCKER_CONFIG").map { $0 + "/config.json" })
            ?? ProcessEnv.get("HOME").map { $0 + "/.docker/config.json" }
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

    @Option(help: "Without a daemon: the in-process engine's data directory (env: SANDPIT_DATA_DIR).")
    var dataDir: String = ProcessEnv.get("SANDPIT_DATA_DIR") ?? Rootless.defaultDataDir

    var socket: String? {
        if let s = socketPath, !s.isEmpty { return s }
        if let s = ProcessEnv.get("SANDPIT_SOCKET"), !s.isEmpty { return s }
        return nil
    }

    /// The daemon on the socket, or an engine in this process (its defaults, this data dir).
    func connect() async throws -> any RPCClient {
        if let s = socket { return try DaemonClient(path: s) }
        try RootlessEntry.ifNeeded()
        LoggingSystem.bootstrapOnce()
        let engine = try EngineOptions.parse(["--data-dir", dataDir])
        return InProcessClient(service: try engine.makeService(logger: engine.makeLogger()))
    }

    /// The daemon on the socket: commands about sandboxes that outlive the command need one.
    func connectDaemon(_ command: String) throws -> DaemonClient {
        guard let s = socket else {
            throw ValidationError("sandpit \(command) needs a running daemon: pass --socket PATH or set SANDPIT_SOCKET (start one with `sandpit serve --socket PATH`)")
        }
        return try DaemonClient(path: s)
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
        try RootlessEntry.ifNeeded()
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
