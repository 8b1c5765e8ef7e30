#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import Logging
import SandpitCatalog
import SandpitCore
import SandpitOS
import Synchronization

public struct EngineConfig: Sendable {
    public var dataDir: String
    public var storageMode: StorageMode
    public var storageBytes: Int64
    public var agentPath: String
    public var policiesDir: String?
    public var ids: IDMapping
    public var maxSandboxes: Int
    public var readyTimeoutMs: Int
    /// Sandboxes kept started ahead of demand for `sandbox.create` with the
    /// default template, `warmPolicy` and no limit overrides. 0 disables.
    public var warmPool: Int
    public var warmPolicy: String
    public var warmRefillDelayMs: Int = 150
    /// Started sandboxes kept per PRELOAD template (and policy). 0 disables.
    public var warmTemplatePool: Int = 1
    /// Sum of live sandboxes' policy memory limits the daemon admits (nil: no budget).
    public var memoryBudgetBytes: Int64?
    /// Concurrent execs across all sandboxes (nil: no cap).
    public var maxExecs: Int?
    /// Output that finished execs keep for `exec.logs`, across all
    /// sandboxes (each sandbox also keeps at most 128 MiB); past it the daemon
    /// forgets the oldest, anywhere (`OutputLedger`).
    public var finishedOutputBudgetBytes: Int = 256 << 20
    /// How `FROM` reaches registries: plain HTTP for the insecure ones (every
    /// other one is HTTPS with the system's trust store, or a CA file given
    /// for it), and credentials.
    public var registries = RegistryAccess()

    /// As root: host ids 100000–165535. Rootless: the daemon's own user
    /// namespace's ids from 1 up (the user's subordinate range).
    public static let defaultIDs = Rootless.sandboxIDs ?? IDMapping(hostBase: 100_000, count: 65_536)
    /// Host uids that own sandboxes' user namespaces, one per sandbox (see
    /// `SandboxSpawner.spawn`): 0x7F000000 up to below systemd's foreign range
    /// (0x7FFE0000). No process runs with them and no file belongs to them.
    public static let ownerIDs: ClosedRange<UInt32> = 0x7F00_0000...0x7FFD_FFFF

    public init(dataDir: String, storageMode: StorageMode = .loop, storageBytes: Int64 = 32 << 30, agentPath: String,
                policiesDir: String?, ids: IDMapping = EngineConfig.defaultIDs,
                maxSandboxes: Int = 256, readyTimeoutMs: Int = 15_000, warmPool: Int = 2, warmPolicy: String = "default") {
        self.dataDir = dataDir
        self.storageMode = storageMode
        self.storageBytes = storageBytes
        self.agentPath = agentPath
        self.policiesDir = policiesDir
        self.ids = ids
        self.maxSandboxes = maxSandboxes
        self.readyTimeoutMs = readyTimeoutMs
        self.warmPool = warmPool
        self.warmPolicy = warmPolicy
    }
}

/// What `exec.run` asks for, validated.
public struct ExecRequest: Sendable {
    public var argv: [String]
    public var env: [String: String]
    public var cwd: String?
    public var stdin: [UInt8]?
    public var timeoutMs: Int?
    public var receivedNs: UInt64
    /// A helper the daemon runs for a longer-lived feature (an interpreter
    /// context's driver): its stdin stays open for later frames, it has no
    /// wall-time limit, takes no exec slot, is not activity for the idle
    /// policy and ending it is not a step. What it runs on behalf of the
    /// client is accounted by that feature.
    var service = false
    /// Runs nothing: holds the exec's pipes until an interpreter forked from
    /// a zygote takes them over (see `Engine.nestInterpreter`).
    var placeholder = false
    /// As the sandbox's root, not the template's user: `exec.run` with
    /// `user: "root"` (it keeps the capabilities of `sp_root_caps`), or a
    /// zygote's interpreter, which must own the namespaces it nests.
    public var asRoot = false
    /// Keep stdin open after `stdin` (if any): more comes with `Engine.input`.
    public var stdinPipe = false
    /// Run on a new pseudo-terminal of this size (rows, cols): its controlling terminal.
    public var pty: (rows: Int, cols: Int)?

    public init(argv: [String], env: [String: String] = [:], cwd: String? = nil, stdin: [UInt8]? = nil,
                timeoutMs: Int? = nil, receivedNs: UInt64 = Clock.monotonicNs()) {
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.stdin = stdin
        self.timeoutMs = timeoutMs
        self.receivedNs = receivedNs
    }
}

/// The sandbox engine: creates, runs and tears down sandboxes and keeps the
/// catalog in step. All methods are safe to call concurrently.
public final class Engine: Sendable {
    public let config: EngineConfig
    public let catalog: Catalog
    let checkpointLog: CheckpointLog
    public let storage: StorageVolume
    public let cgroups: any CgroupDriver
    public let policies: PolicyStore
    /// Facts about this host that policies compile against (fixed for the daemon's life).
    public let hostFacts: SandboxPlan.Host
    let logger: Logger
    let agentFd: FileDescriptor
    let lockFd: FileDescriptor
    let defaultLayer: String
    let registry = Mutex<[String: SandboxRuntime]>([:])
    /// Pre-started sandboxes (template default, policy `config.warmPolicy`), not yet handed out.
    let warmPool = Mutex<[SandboxRuntime]>([])
    let refilling = Atomic<Bool>(false)
    /// Warm templates: per "templateId policy", started sandboxes whose default
    /// Python context has imported the template's PRELOAD modules.
    let templatePools = Mutex<[String: [SandboxRuntime]]>([:])
    /// Template pools being refilled (one refill per pool at a time).
    let templateRefills = Mutex<Set<String>>([])
    /// Warm parents of PRELOAD templates, per "templateId policy" (see Zygote.swift).
    let zygotes = Mutex<[String: Zygote]>([:])
    /// Zygotes being started, and ones that failed to (not tried again).
    let zygoteStarts = Mutex<[String: Bool]>([:])
    /// Hibernated sandboxes' idle clocks (for delete-after) and plans (to wake them as they were).
    let dormant = Mutex<[String: IdleTracker]>([:])
    let dormantPlans = Mutex<[String: SandboxPlan]>([:])
    let waking = Mutex<[String: Task<Wake, Error>]>([:])
    let idleService = Mutex<Task<Void, Never>?>(nil)
    let admission: Admission
    /// The daemon-wide budget for finished execs' retained output.
    let outputLedger: OutputLedger
    let observers = Mutex<[Int64: @Sendable (StateEvent) -> Void]>([:])
    let portObservers = Mutex<[Int64: @Sendable (PortEvent) -> Void]>([:])
    /// Interpreter contexts of runtimes that ended (sandbox id → context id → language),
    /// so the next cell restarts them and reports `restarted`.
    let lostContexts = Mutex<[String: [String: String]]>([:])
    let lastAgentRss = Atomic<UInt64>(0)
    let closing = Atomic<Bool>(false)
    /// Uploads in progress (`fs.upload`), by id.
    let uploads = Mutex<[String: Upload]>([:])
    /// Template builds and layer garbage collection, one at a time.
    let buildLock = StepLock()
    /// The host's /usr for sandboxes (nil when it could not be set up: each
    /// sandbox then gets a plain read-only bind).
    let hostUsr: HostUsr?
    /// Checkpoint checksums being computed, by checkpoint id (see `sealCheckpoint`).
    let checksums = Mutex<[String: Task<Void, Never>]>([:])
    /// When the catalog's disk reserve was last checked, and whether it was there.
    let reserveCheck = Mutex<Int64>(0)
    let reserveHeld = Atomic<Bool>(true)
    /// The next sandbox user namespace owner, as an offset into `EngineConfig.ownerIDs`.
    let nextOwner: Atomic<UInt32>

    public static let version = "0.1.0"
    public static let cgroupPrefix = "sandpit"

    /// Opens (or creates) a data dir: takes its lock, opens the catalog,
    /// mounts storage, reconciles what an earlier daemon left, and makes sure
    /// the default template exists.
    public init(config: EngineConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        admission = Admission(maxSandboxes: config.maxSandboxes, memoryBudget: config.memoryBudgetBytes, maxExecs: config.maxExecs)
        outputLedger = OutputLedger(budget: config.finishedOutputBudgetBytes)
        guard geteuid() == 0 else {
            throw SandpitError(.unavailable, "the engine runs as root, or as root of a user namespace of its own (rootless mode, which `sandpit` enters by itself when started as a user)")
        }
        if Rootless.active && Rootless.sandboxIDs == nil {
            throw SandpitError(.unavailable, "rootless mode without a subordinate id range: sandboxes need at least 1,001 ids (see /etc/subuid and /etc/subgid)")
        }
        // What no fallback can replace: refuse to start, saying what is missing, rather than fail every create.
        let missing = KernelFeatures.checks().filter { $0.required && !$0.ok }
        guard missing.isEmpty else {
            throw SandpitError(.unavailable, "this host cannot make sandboxes: " + missing.map { "\($0.name): \($0.detail)" }.joined(separator: "; ") + " (see `sandpit doctor`)")
        }
        try FS.mkdirs(config.dataDir, mode: 0o711)
        Self.raiseFileLimitCeiling()
        lockFd = try Self.lock(config.dataDir)
        let agent = try sys("open", path: config.agentPath) { sp_open_path(config.agentPath) }
        agentFd = FileDescriptor(agent)
        policies = try PolicyStore(directory: config.policiesDir)
        catalog = try Catalog(path: config.dataDir + "/catalog.sqlite")
        checkpointLog = CheckpointLog(catalog: catalog, logger: logger)
        do {
            // Rootless: no loop device to mount a store image on.
            storage = try StorageVolume.prepare(dataDir: config.dataDir, mode: Rootless.active ? .dir : config.storageMode, sizeBytes: config.storageBytes)
        } catch where config.storageMode == .loop {
            logger.warning("loop storage unavailable, using a plain directory", metadata: ["error": "\(error)"])
            storage = try StorageVolume.prepare(dataDir: config.dataDir, mode: .dir, sizeBytes: 0)
        }
        // One parent group per data dir, named stably so a restarted daemon finds what its predecessor left.
        cgroups = Cgroups.detect(prefix: Self.cgroupPrefix + "-" + String(Self.fnv1a(config.dataDir), radix: 36), writableOnly: Rootless.active)
        hostFacts = Self.hostFacts(cgroup: cgroups.version, ids: config.ids)
        try FS.mkdirs(storage.root + "/sandboxes", mode: 0o711)
        // Exposed ports' socket files and exec logs belong to runtimes, which never outlive a daemon.
        try? FS.removeTree(config.dataDir + "/ports")
        try? FS.removeTree(config.dataDir + "/logs")
        defaultLayer = try DefaultTemplate.ensure(storeRoot: storage.root, ids: config.ids)
        KernelFeatures.attachDir = config.dataDir + "/attach"
        DetachedMount.clearAttachments()
        do {
            let mapping: FileDescriptor?
            do { mapping = try config.ids.namespace() } catch {
                logger.warning("no id-mapping namespace; /usr shows the overflow id in sandboxes", metadata: ["error": "\(error)"])
                mapping = nil
            }
            hostUsr = try HostUsr(emptyDir: config.dataDir + "/empty", mapping: mapping)
            mapping?.close()
        } catch {
            logger.warning("no per-sandbox /usr overlay; sandboxes share the host's /usr inodes (and file locks)", metadata: ["error": "\(error)"])
            hostUsr = nil
        }
        if !SandboxSpawner.isStaticExecutable(config.agentPath) {
            logger.warning("the agent is not statically linked (scripts/build-agent makes one): sandboxes start from a copy of the host's mounts and keep them alive while they live",
                           metadata: ["agent": "\(config.agentPath)"])
        } else {
            do { try SandboxSpawner.useAnchorNamespace(scratch: config.dataDir + "/anchor") } catch {
                logger.warning("sandboxes start from a copy of the host's mounts, which they keep alive while they live", metadata: ["error": "\(error)"])
            }
        }
        // Different data dirs (daemons) start at different owners.
        nextOwner = Atomic(Self.fnv1a(config.dataDir) % UInt32(EngineConfig.ownerIDs.count))
        try reconcile()
        try reconcileLayers()
        var st = statvfs()
        let free = statvfs(config.dataDir, &st) == 0 ? Int64(st.f_bavail) * Int64(st.f_frsize) : Int64.max
        if !catalog.reserve.ensure() || !catalog.startReserve.ensure() || free < 64 << 20 {
            reserveHeld.store(catalog.reserve.held, ordering: .relaxed)
            logger.error("the data dir's disk is full (\(free >> 20) MiB free): started anyway (the catalog keeps a reserve); new sandboxes and checkpoints fail until space is freed",
                         metadata: ["dataDir": "\(config.dataDir)"])
        }
        refillWarmPool()
        startIdleService()
    }

    /// Sandboxes inherit the daemon's hard RLIMIT_NOFILE and cannot raise it
    /// (no CAP_SYS_RESOURCE outside their namespace), so a policy's
    /// `openFiles` above the daemon's ceiling would fail every exec. As root,
    /// lift the ceiling to the kernel's (the soft limit stays as it was).
    static func raiseFileLimitCeiling() {
        var rl = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return }
        let max = (try? FS.readText("/proc/sys/fs/nr_open")).flatMap { UInt($0.trimmingWhitespace) } ?? 1_048_576
        if rl.rlim_max < rlim_t(max) {
            rl.rlim_max = rlim_t(max)
            _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl)
        }
    }

    /// A host uid to own the next sandbox's user namespace (0 when that is turned off).
    func nextOwnerID() -> UInt32 {
        // Rootless: no host id outside the user's range to give away.
        guard !KernelFeatures.isDisabled(KernelFeatures.sandboxOwnerIDs), !Rootless.active else { return 0 }
        let n = UInt32(EngineConfig.ownerIDs.count)
        return EngineConfig.ownerIDs.lowerBound + nextOwner.wrappingAdd(1, ordering: .relaxed).oldValue % n
    }

    static func fnv1a(_ s: String) -> UInt32 {
        var h: UInt32 = 2_166_136_261
        for b in s.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return h
    }

    static func lock(_ dir: String) throws -> FileDescriptor {
        let path = dir + "/daemon.lock"
        let fd = FileDescriptor(try sys("open", path: path) { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) })
        if flock(fd.raw, LOCK_EX | LOCK_NB) != 0 {
            let holder = (try? FS.readText(path))?.trimmingWhitespace ?? "?"
            throw SandpitError(.busy, "data dir \(dir) is in use by another sandpit daemon (pid \(holder)); stop it or pass a different --data-dir",
                               details: ["dataDir": .string(dir)])
        }
        _ = ftruncate(fd.raw, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { write(fd.raw, $0, strlen($0)) }
        return fd
    }

    /// Metadata that marks a sandbox whose writable layer was a scratch tmpfs.
    static let scratchKey = "sandpit.scratch"

    /// Makes the catalog and the host agree after a crash or restart:
    /// sandboxes that were live are now hibernated (their files are kept and
    /// they wake on the next request), template-build and scratch sandboxes
    /// are forgotten, execs that were running are lost, and leftover cgroups
    /// and deleted sandboxes' files are removed.
    func reconcile() throws {
        let now = Clock.nowMs()
        let all = try catalog.allSandboxes()
        var known = Set<String>()
        for s in all {
            let dir = storage.root + "/sandboxes/" + s.id
            // A template build's throwaway sandbox (the build died with the
            // daemon), or one whose files were in memory: nothing to keep.
            if s.metadata["sandpit.build"] != nil || (s.metadata[Self.scratchKey] == "true" && !FS.exists(dir + "/disk.img")) {
                try? FS.removeTree(dir)
                try catalog.sync { c in try c.forget(s.id) }
                continue
            }
            known.insert(s.id)
            if s.state.isLive {
                // Its files are intact on its disk: it wakes on the next request.
                try catalog.setState(s.id, .hibernated, reason: "daemon restarted; files kept, processes lost")
                logger.info("reconciled sandbox", metadata: ["sandbox": "\(s.id)", "was": "\(s.state.rawValue)"])
            }
            if s.state.isLive || s.state == .hibernated {
                let policy = (try? policies.policy(s.policy).idle) ?? IdlePolicy()
                dormant.withLock { $0[s.id] = IdleTracker(policy: policy, phase: .hibernated, now: now) }
            }
        }
        try catalog.loseRunningExecs(at: now)
        // A daemon killed mid-checkpoint left that sandbox's disk frozen (and
        // held, loop device and all): thaw it before anything uses the disk.
        for image in SandboxDisk.releaseLeftovers(under: storage.root + "/sandboxes/") {
            logger.warning("thawed a sandbox disk a dead daemon left frozen", metadata: ["image": "\(image)"])
        }
        for name in cgroups.existing() {
            do { try cgroups.handle(name).destroy() } catch { logger.warning("leftover cgroup", metadata: ["cgroup": "\(name)", "error": "\(error)"]) }
        }
        for d in FS.listDirectory(storage.root + "/sandboxes") where !known.contains(d) {
            try? FS.removeTree(storage.root + "/sandboxes/" + d)
        }
        // Checkpoints: files a crash left without a catalog row (or half
        // written) go; rows whose files are missing go too.
        let listed = try catalog.allCheckpointIds()
        var present = Set<String>()
        for sb in known {
            let dir = checkpointDir(sb)
            for f in FS.listDirectory(dir) {
                let id = String(f.prefix { $0 != "." })
                if f.hasSuffix(".tmp") || !listed.contains(id) { SandboxDisk.remove(dir + "/" + f) } else if f.hasSuffix(".img") { present.insert(id) }
            }
            SandboxDisk.remove(sandboxDir(sb) + "/disk.img.restore")
            SandboxDisk.remove(sandboxDir(sb) + "/disk.img.tmp")
        }
        let dangling = listed.subtracting(present)
        if !dangling.isEmpty {
            logger.warning("dropping checkpoints whose files are gone", metadata: ["count": "\(dangling.count)"])
            try catalog.dropCheckpoints(Array(dangling))
        }
    }

    // MARK: info

    public var cgroupVersion: CgroupVersion { cgroups.version }

    /// What this host gives sandboxes: the kernel, each facility Sandpit
    /// uses (with what happens without it), the cgroup controllers in use and
    /// so the limits that are enforced. `server.info.host`, `sandpit doctor`.
    public var hostReport: JSONValue {
        var features: JSONObject = [:]
        for c in KernelFeatures.checks() { features[c.name] = .object(["ok": .bool(c.ok), "detail": .string(c.detail)]) }
        features["idmapped /usr"] = .object(["ok": .bool(hostUsr?.idmapped ?? false),
                                             "detail": .string(hostUsr?.idmapped == true ? "yes" : "no: /usr's files show as the overflow id (nobody) inside")])
        features["per-sandbox /usr overlay"] = .object(["ok": .bool(hostUsr != nil),
                                                        "detail": .string(hostUsr != nil ? "yes" : "no: sandboxes share /usr's inodes (and file locks) with the host")])
        features["reflink store"] = .object(["ok": .bool(storage.reflink), "detail": .string(storage.reflink ? "yes" : "no: checkpoints and forks copy images in full")])
        let controllers = cgroups.controllers()
        var enforced: [JSONValue] = []
        if controllers.contains("memory") { enforced += ["memoryBytes (swap off, OOM reported)"] }
        if controllers.contains("pids") { enforced += ["pids"] }
        if controllers.contains("cpu") { enforced += ["cpuMillicores"] }
        if controllers.contains("freezer") || controllers.contains("freeze") { enforced += ["pause (freeze)"] }
        return .object([
            "kernel": .string(KernelFeatures.release),
            "cgroup": .object(["version": .string(cgroups.version.rawValue), "controllers": .array(controllers.map { .string($0) })]),
            "rootless": .bool(Rootless.active),
            "limitsEnforced": .array(enforced + (SandboxDisk.directories ? [] : ["diskBytes", "diskInodes"]) + ["tmpBytes", "openFiles", "execTimeoutMs", "outputBytes"]),
            "features": .object(features),
        ])
    }
    public var agentRssBytes: UInt64 { lastAgentRss.load(ordering: .relaxed) }
    public var liveCount: Int { registry.withLock { $0.count } }
    public var warmCount: Int { warmPool.withLock { $0.count } }
    /// Warm sandboxes of PRELOAD templates, ready to hand out.
    public var warmTemplateCount: Int { templatePools.withLock { $0.values.reduce(0) { $0 + $1.count } } }
    /// Warm parents of PRELOAD templates that new sandboxes are forked from (retired ones not counted).
    public var zygoteCount: Int { zygotes.withLock { $0.count } }

    // MARK: sandboxes


    public static func hostFacts(cgroup: CgroupVersion, ids: IDMapping) -> SandboxPlan.Host {
        var rl = rlimit()
        let ceiling: Int64? = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl) == 0 && rl.rlim_max < rlim_t(Int64.max) ? Int64(rl.rlim_max) : nil
        var host = SandboxPlan.Host(cgroup: cgroup.rawValue, uidBase: Int64(ids.hostBase), uidCount: Int64(ids.count),
                                    seccompArch: String(cString: sp_seccomp_arch()), seccompRules: seccompRules.count, openFilesCeiling: ceiling)
        host.rootless = Rootless.active
        return host
    }

    /// The seccomp filter's rules, for display (read from the C table once).
    public static let seccompRules: [(name: String, nr: Int, action: String)] = {
        var rules: UnsafePointer<sp_seccomp_rule>?
        let n = sp_seccomp_rules(&rules)
        return (0..<n).map { i in
            let r = rules![i]
            return (String(cString: r.name), Int(r.nr), String(cString: r.action))
        }
    }()

    /// Compiles a named policy, narrowed by a client's `limits`, for a sandbox
    /// (`purpose: build` policies are refused) or for a template build.
    public func plan(policy name: String, limits: JSONObject = [:], purpose: Policy.Purpose = .sandbox) throws(SandpitError) -> SandboxPlan {
        let base = try policies.policy(name)
        guard base.purpose == purpose else {
            throw SandpitError(.permissionDenied, "policy \(name) is for \(base.purpose == .build ? "template builds" : "sandboxes"), not \(purpose == .build ? "template builds" : "sandboxes")",
                               details: ["policy": .string(name)])
        }
        return SandboxPlan.compile(try base.tightened(by: limits), host: hostFacts)
    }

    public func create(template: String, policy policyName: String, limits: JSONObject = [:], idle: JSONObject = [:],
                       metadata: [String: String], scratch: Bool = false, caller: Caller, admit: AdmissionTicket? = nil) async throws -> SandboxRecord {
        guard !closing.load(ordering: .relaxed) else { throw SandpitError(.unavailable, "the daemon is shutting down") }
        let tpl = try await resolveTemplate(template, caller: caller)
        let templateName = tpl.displayName
        var plan = try plan(policy: policyName, limits: limits)
        try plan.narrowIdle(by: idle)
        var metadata = metadata
        if scratch {
            plan.useScratchDisk()
            // How a restarted daemon knows there are no files to keep.
            if plan.scratchDisk { metadata[Self.scratchKey] = "true" }
        }
        let memory = plan.policy.memoryBytes ?? 0
        if let b = config.memoryBudgetBytes, memory > b {
            throw SandpitError(.limitExceeded, "policy \(plan.policy.name) asks for \(memory) bytes of memory; the daemon's whole budget is \(b)")
        }
        try await admitSandbox(memory: memory, admit ?? AdmissionTicket(client: caller.uid))
        var admitted = true
        defer { if admitted { admission.release(.sandbox(memory: memory)) } }
        let now = Clock.nowMs()
        let rt: SandboxRuntime
        let preloads = !tpl.config.preload.isEmpty
        var warm: SandboxRuntime?
        if limits.count == 0, !scratch {
            if tpl.isBuiltin { warm = await claimWarm(policy: policyName) } else if preloads { warm = await claimWarmTemplate(tpl.templateId, name: templateName, policy: plan.policy.name) }
        }
        if let warm {
            // A pre-started sandbox of the same template and policy: it becomes this one.
            rt = warm
            rt.idle.withLock { $0.policy = plan.idle; $0.touch(now: now) }
            let base = rt.warmBase.withLock { $0 }
            let record = SandboxRecord(id: rt.id, state: .running, template: templateName, policy: plan.policy.name, metadata: metadata,
                                       createdAt: now, lastActiveAt: now, execSeq: rt.record.execSeq,   // its context is exec 1
                                       owner: caller.uid, head: base?.id, templateId: tpl.templateId)
            rt.state.withLock { $0.record = record }
            do {
                try await catalog.insertSandbox(record)
                if let base {
                    await checkpointLog.add(base)
                    sealCheckpoint(rt.id, base)
                }
            } catch {
                await teardown(rt)
                try? FS.removeTree(storage.root + "/sandboxes/" + rt.id)
                throw error
            }
        } else {
            let id = Identifier.make("sb")
            var record = SandboxRecord(id: id, state: .starting, template: templateName, policy: plan.policy.name, metadata: metadata,
                                       createdAt: now, lastActiveAt: now, owner: caller.uid, templateId: tpl.templateId)
            // Recorded before anything exists on the host, so a crash mid-start is reconciled.
            try await catalog.insertSandbox(record)
            do {
                rt = try await launch(record, plan: plan)
            } catch {
                try? await catalog.deleteSandbox(id, at: Clock.nowMs())
                throw error
            }
            record.state = .running
            record.lastActiveAt = Clock.nowMs()
            rt.state.withLock { $0.record = record }
            try await catalog.updateSandbox(record)
        }
        rt.admittedMemory.withLock { $0 = memory }
        admitted = false
        registry.withLock { $0[rt.id] = rt }
        if let ms = plan.policy.sandboxTimeoutMs {
            let name = plan.policy.name
            Task { [weak self, weak rt] in
                try? await Task.sleep(for: .milliseconds(ms))
                guard let self, let rt else { return }
                await self.stop(rt, reason: "sandbox wall time of \(ms) ms (policy \(name)) exceeded; " + (rt.plan.scratchDisk ? "its scratch files are gone" : "files kept"))
            }
        }
        await catalog.event("created", sandbox: rt.id, detail: "template=\(templateName) (\(tpl.templateId)) policy=\(plan.policy.name)")
        refillWarmPool()
        if preloads, limits.count == 0, !scratch { refillTemplatePool(tpl.templateId, name: templateName, policy: plan.policy.name) }
        return rt.record
    }

    /// How a sandbox's agent starts: cloned by the daemon (a plain sandbox, or
    /// a zygote, which also gets a socket for nested sandboxes' descriptors),
    /// or by a zygote's agent, nested in its namespaces.
    enum LaunchRole {
        case sandbox
        case zygote(nestSocket: FileDescriptor)
        case nested(Zygote)
    }

    /// Builds a sandbox on the host and waits for its agent: write layer,
    /// mounts, cgroup, namespaces, agent, proxy. Touches neither the catalog
    /// nor the registry; on failure everything it made is undone.
    func launch(_ record: SandboxRecord, plan: SandboxPlan, fresh: Bool = true, image given: SandboxImage? = nil,
                role: LaunchRole = .sandbox) async throws -> SandboxRuntime {
        let id = record.id
        let image: SandboxImage
        if let given { image = given } else { image = try await self.image(record.templateId) }
        let policy = plan.policy
        let dir = storage.root + "/sandboxes/" + id
        var cgroup: CgroupHandle?
        var runtime: SandboxRuntime?
        var disk: FileDescriptor?, scratch: FileDescriptor?
        do {
            if !FS.isDirectory(dir) { try FS.mkdir(dir, mode: 0o700) }
            let rootUid = config.ids.hostID(0)
            let upper: String, work: String
            if plan.scratchDisk, let bytes = policy.diskBytes {
                let d = try SandboxDisk.scratch(bytes: bytes, inodes: policy.diskInodes, rootUid: rootUid)
                scratch = d
                upper = SandboxDisk.path(in: d, SandboxDisk.upper)
                work = SandboxDisk.path(in: d, SandboxDisk.work)
            } else if let bytes = policy.diskBytes {
                let image = dir + "/disk.img"
                if !FS.exists(image) {
                    try SandboxDisk.create(image: image, storage: storage, bytes: bytes, inodes: policy.diskInodes, rootUid: rootUid)
                }
                let d = try SandboxDisk.mount(image)
                disk = d
                upper = SandboxDisk.path(in: d, SandboxDisk.upper)
                work = SandboxDisk.path(in: d, SandboxDisk.work)
            } else {
                upper = dir + "/upper"
                work = dir + "/work"
                try FS.mkdir(upper, mode: 0o755)
                try FS.mkdir(work, mode: 0o700)
                try FS.chown(upper, uid: rootUid, gid: rootUid)
            }
            let root = try DetachedMount.overlay(lower: image.lower, upper: upper, work: work)
            // The overlay holds the scratch tmpfs from here on; nothing else needs it.
            scratch?.close()
            scratch = nil
            let usr = image.hostUsr ? try hostUsr?.mount() ?? DetachedMount.readOnlyBind("/usr") : nil
            let dev = try DetachedMount.devices(owner: rootUid)
            let limits = CgroupLimits(memoryBytes: policy.memoryBytes, pids: policy.pids.map { Int($0) },
                                      cpuMillicores: policy.cpuMillicores.map { Int($0) })
            let cg = plan.useCgroup ? try cgroups.create(id, limits: limits) : NoCgroupDriver().handle(id)
            cgroup = cg
            var tracking: FileDescriptor?
            if let t = cg.trackingDir {
                try cg.delegate(to: rootUid)
                tracking = FileDescriptor(try sys("open", path: t) { open(t, O_RDONLY | O_DIRECTORY | O_CLOEXEC) })
            }
            defer { tracking?.close() }
            let ids = config.ids
            var seccomp: UInt32 = 0
            if plan.seccompEnabled { seccomp = 1 << 8 | (plan.restrictSockets ? SP_SECCOMP_RESTRICT_SOCKETS : 0) }
            var argv = ["sandpit-agent", "--hostname", "sandpit", "--tmp-size", "\(policy.tmpBytes ?? 0)", "--usr", usr == nil ? "0" : "1",
                        "--seccomp", "\(seccomp)", "--nofile", "\(policy.openFiles ?? 0)", "--output-rate", "\(policy.outputBytesPerSecond ?? 0)"]
            // The agent in its cgroup. The id maps come first: the daemon writes
            // them, or a zygote's agent did for a nested sandbox.
            let prepare: (Int32) throws -> Void = { pid in
                try cg.addProcess(pid)
            }
            let spawned: SandboxSpawner.Spawned
            switch role {
            case .nested(let z):
                spawned = try await spawnNested(in: z, argv: argv, rootMount: root, usrMount: usr, devMount: dev, cgroupDir: tracking, prepare: prepare)
            case .sandbox, .zygote:
                var nest: FileDescriptor?
                if case .zygote(let socket) = role { argv += ["--zygote", "1"]; nest = socket }
                spawned = try SandboxSpawner.spawn(agentFd: agentFd.raw, argv: argv, rootMount: root, usrMount: usr,
                                                   devMount: dev, cgroupDir: tracking, nestSocket: nest, owner: nextOwnerID()) { pid in
                    try ids.apply(to: pid)
                    try prepare(pid)
                }
            }
            let rt = SandboxRuntime(record: record, plan: plan, image: image, cgroup: cg, spawned: spawned, disk: disk, ledger: outputLedger) { [weak self] rt, why in
                self?.agentDied(rt, why)
            }
            runtime = rt
            if case .nested(let z) = role {
                Task { [weak self] in
                    await rt.waitExited()
                    await self?.releaseZygoteChild(z)
                }
            }
            let channel = try await AgentChannel.open(
                fd: spawned.controlFd,
                onFrame: { [rt] f in rt.handle(f) },
                onClose: { [rt] e in rt.channelClosed(e) })
            rt.state.withLock { $0.channel = channel }
            let rss = try await withReadyTimeout(rt)
            lastAgentRss.store(rss, ordering: .relaxed)
            if let port = plan.proxyPort {
                let proxy = try await EgressProxy.start(pid: spawned.pid, port: UInt16(port), allow: policy.allow, sandboxId: id, logger: logger)
                rt.proxy.withLock { $0 = proxy }
            }
            return rt
        } catch {
            logger.error("sandbox start failed", metadata: ["sandbox": "\(id)", "error": "\(error)"])
            if let rt = runtime {
                rt.proxy.withLock { $0 }?.close()
                rt.state.withLock { $0.deleting = true }
                SandboxSpawner.kill(pidfd: rt.spawned.pidfd)
                rt.state.withLock { $0.channel }?.close()
                if rt.state.withLock({ $0.channel }) == nil { rt.channelClosed(nil) }
                await rt.waitExited()
                close(rt.spawned.pidfd)
            }
            disk?.close()
            scratch?.close()
            try? cgroup?.destroy()
            // A sandbox being restored or revived keeps its files and checkpoints.
            if fresh { try? FS.removeTree(dir) }
            if let e = error as? SandpitError { throw e }
            throw SandpitError(.sandboxFailed, "could not start sandbox: \(error)")
        }
    }

    /// Kills every process of a live sandbox and frees its host resources
    /// (cgroup, disk mount, pidfd). Its files stay. Returns false when another
    /// caller is already tearing it down (and waits for that).
    @discardableResult
    func teardown(_ rt: SandboxRuntime) async -> Bool {
        let first = rt.state.withLock { s -> Bool in
            defer { s.deleting = true }
            return !s.deleting
        }
        guard first else {
            await rt.waitExited()
            return false
        }
        rt.proxy.withLock { $0 }?.close()
        SandboxSpawner.kill(pidfd: rt.spawned.pidfd)
        rt.cgroup.thaw()   // frozen processes cannot die
        await rt.waitExited()
        registry.withLock { _ = $0.removeValue(forKey: rt.id) }
        freeHostResources(rt)
        return true
    }

    /// What a sandbox holds on the host once its agent is gone: proxy,
    /// cgroup, pidfd, disk mount, control channel, admission room.
    func freeHostResources(_ rt: SandboxRuntime) {
        rt.proxy.withLock { $0 }?.close()
        for x in rt.exposures.withLock({ x in defer { x = [:] }; return Array(x.values) }) { x.close() }
        for w in rt.fileWatches.withLock({ w in defer { w = [:] }; return Array(w.values) }) { w.stop() }
        let contexts = rt.contexts.withLock { c in defer { c = [:] }; return c }
        if !contexts.isEmpty, !rt.state.withLock({ $0.record.state == .deleted }) {
            lostContexts.withLock { l in for (cid, c) in contexts { l[rt.id, default: [:]][cid] = c.language } }
        }
        do { try rt.cgroup.destroy() } catch {
            logger.warning("sandbox cgroup left behind", metadata: ["sandbox": "\(rt.id)", "error": "\(error)", "processes": "\(rt.cgroup.processes())"])
        }
        close(rt.spawned.pidfd)
        rt.disk?.close()
        rt.state.withLock { $0.channel }?.close()
        releaseAdmission(rt)
    }

    /// Stops a live sandbox, keeping its files (its wall time passed).
    func stop(_ rt: SandboxRuntime, reason: String) async {
        guard await teardown(rt) else { return }
        logger.info("sandbox stopped", metadata: ["sandbox": "\(rt.id)", "reason": "\(reason)"])
        try? catalog.setState(rt.id, .stopped, reason: reason)
        await catalog.event("stopped", sandbox: rt.id, detail: reason)
        emit(rt.id, .stopped, reason: reason, owner: rt.record.owner)
    }

    private func withReadyTimeout(_ rt: SandboxRuntime) async throws -> UInt64 {
        let ms = config.readyTimeoutMs
        return try await withThrowingTaskGroup(of: UInt64.self) { g in
            g.addTask { try await rt.waitReady() }
            g.addTask {
                try await Task.sleep(for: .milliseconds(ms))
                rt.failReadiness("sandbox agent not ready after \(ms) ms")
                throw CancellationError()
            }
            defer { g.cancelAll() }
            return try await g.next()!
        }
    }

    /// The agent died without being asked (killed from outside, or crashed).
    func agentDied(_ rt: SandboxRuntime, _ why: String) {
        guard registry.withLock({ $0.removeValue(forKey: rt.id) }) != nil else { return }
        logger.warning("sandbox stopped unexpectedly", metadata: ["sandbox": "\(rt.id)", "reason": "\(why)"])
        freeHostResources(rt)
        try? catalog.setState(rt.id, .stopped, reason: why)
    }

    /// The live runtime of a sandbox the caller may see. Another tenant's
    /// sandbox is reported exactly like one that does not exist.
    func runtime(_ id: String, caller: Caller) throws(SandpitError) -> SandboxRuntime? {
        guard Identifier.isValid(id, prefix: "sb") else { throw SandpitError.notFound("Sandbox", id) }
        guard let rt = registry.withLock({ $0[id] }) else { return nil }
        guard caller.owns(rt.record) else { throw SandpitError.notFound("Sandbox", id) }
        return rt
    }

    public func sandbox(_ id: String, caller: Caller) async throws -> SandboxRecord {
        if let rt = try runtime(id, caller: caller) { return rt.record }
        guard let r = try await catalog.sandbox(id), r.state != .deleted, caller.owns(r) else { throw SandpitError.notFound("Sandbox", id) }
        return r
    }

    /// The compiled plan of a live sandbox (its effective limits).
    public func livePlan(_ id: String, caller: Caller) throws(SandpitError) -> SandboxPlan? {
        try runtime(id, caller: caller)?.plan
    }

    /// Lists sandboxes oldest first. `cursor` is the opaque `nextCursor` of the previous page.
    public func list(state: SandboxState?, metadata: [String: String], limit: Int, cursor: String?, caller: Caller) async throws
        -> (sandboxes: [SandboxRecord], nextCursor: String?)
    {
        var after: (Int64, String)?
        if let c = cursor {
            guard let bytes = Base64.decode(c), let text = String(validating: bytes, as: UTF8.self),
                  let dot = text.firstIndex(of: "."), let at = Int64(text[..<dot]) else {
                throw SandpitError.invalidParams("cursor", "not a cursor returned by sandbox.list")
            }
            after = (at, String(text[text.index(after: dot)...]))
        }
        let live = registry.withLock { $0.mapValues { $0.record } }
        var out: [SandboxRecord] = []
        var scanAfter = after
        while out.count <= limit {
            let page = try await catalog.listSandboxes(state: nil, after: scanAfter, limit: 500)
            if page.isEmpty { break }
            for var r in page {
                if let l = live[r.id] { r = l }
                if !caller.owns(r) { continue }
                if let state, r.state != state { continue }
                if !metadata.allSatisfy({ r.metadata[$0.key] == $0.value }) { continue }
                out.append(r)
                if out.count > limit { break }
            }
            let last = page.last!
            scanAfter = (last.createdAt, last.id)
        }
        var next: String?
        if out.count > limit {
            out.removeLast(out.count - limit)
            let last = out.last!
            next = Base64.encode(Array("\(last.createdAt).\(last.id)".utf8))
        }
        return (out, next)
    }

    /// Kills every process of the sandbox (the agent is PID 1 of its pid
    /// namespace, so SIGKILL to it takes all of them, including stopped and
    /// setsid'd ones), removes its cgroup and write layer, and marks it deleted.
    /// Where a sandbox's execs keep output that outgrew memory (`ExecSession`).
    func logsDir(_ id: String) -> String { config.dataDir + "/logs/" + id }

    public func delete(_ id: String, caller: Caller, reason: String = "deleted") async throws {
        let owner: Int64, templateId: String
        if let rt = try runtime(id, caller: caller) {
            owner = rt.record.owner
            templateId = rt.record.templateId
            guard await teardown(rt) else { return }
        } else {
            guard let r = try await catalog.sandbox(id), r.state != .deleted, caller.owns(r) else { throw SandpitError.notFound("Sandbox", id) }
            owner = r.owner
            templateId = r.templateId
        }
        dormant.withLock { _ = $0.removeValue(forKey: id) }
        dormantPlans.withLock { _ = $0.removeValue(forKey: id) }
        lostContexts.withLock { _ = $0.removeValue(forKey: id) }
        // The catalog first, in one transaction, then the files: a crash in
        // between leaves a deleted sandbox whose files the next start removes,
        // never a listed sandbox that lost its checkpoints.
        await checkpointLog.flush()
        try await catalog.deleteSandbox(id, at: Clock.nowMs(), checkpoints: true)
        try FS.removeTree(storage.root + "/sandboxes/" + id)
        try? FS.removeTree(logsDir(id))
        await catalog.event("deleted", sandbox: id, detail: reason == "deleted" ? "" : reason)
        emit(id, .deleted, reason: reason, owner: owner)
        MemoryTrim.soon()
        collectAfterDelete(templateId: templateId)
    }

    /// When the policy's retention will delete this sandbox if nothing touches
    /// it (ms since the epoch); nil when it never will, or not while it is
    /// busy or held (a running command, a lease, a client holding it).
    public func deleteAt(_ id: String) -> Int64? {
        let now = Clock.nowMs()
        if let rt = registry.withLock({ $0[id] }) {
            return rt.record.keep ? nil : rt.idle.withLock { $0.deleteAt(now: now) }
        }
        return dormant.withLock { $0[id] }?.deleteAt(now: now)
    }

    /// Limits the sandbox ran into, by stable code (`disk_full`, `pids_limit`)
    /// with a sentence each: what a verdict should name when a command failed
    /// because of them (a full disk often ends in an OOM kill or an odd exit).
    public func limitsHit(_ id: String) -> [(code: String, message: String)] {
        guard let rt = registry.withLock({ $0[id] }) else { return [] }
        var out: [(String, String)] = []
        // The root's statfs is its writable layer's (overlayfs reports the
        // upper filesystem): the sandbox's own disk, or a scratch tmpfs.
        let root = open("/proc/\(rt.spawned.pid)/root", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if root >= 0 {
            defer { close(root) }
            if let s = FS.space(root), s.full { out.append(("disk_full", "the sandbox's disk (\(s.totalBytes >> 20) MiB) is full")) }
        }
        if rt.cgroup.pidsLimitReached() {
            out.append(("pids_limit", "it reached the limit of \(rt.plan.policy.pids.map(String.init) ?? "?") processes (forks failed)"))
        }
        return out
    }

    /// The sandbox's latest commands, newest first.
    public func execs(_ id: String, limit: Int, caller: Caller) async throws -> [ExecRecord] {
        _ = try await sandbox(id, caller: caller)
        return try await catalog.execs(of: id, limit: limit)
    }

    // MARK: execs

    /// A command's environment in `rt`: the template's, the proxy's (when the
    /// network mode has one), then the request's own.
    static func commandEnv(_ rt: SandboxRuntime, _ extra: [String: String], asRoot: Bool = false) -> [(String, String)] {
        var env = baseEnv(rt.image.config)
        if asRoot {
            for (k, v) in [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")] {
                if let i = env.firstIndex(where: { $0.0 == k }) { env[i].1 = v }
            }
        }
        if let port = rt.plan.proxyPort {
            let url = "http://127.0.0.1:\(port)"
            env += [("HTTP_PROXY", url), ("HTTPS_PROXY", url), ("http_proxy", url), ("https_proxy", url),
                    ("NO_PROXY", "localhost,127.0.0.1,::1"), ("no_proxy", "localhost,127.0.0.1,::1")]
        }
        for (k, v) in extra.sorted(by: { $0.key < $1.key }) {
            env.removeAll { $0.0 == k }
            env.append((k, v))
        }
        return env
    }

    /// The clean environment every command starts from: the template's user
    /// and home, then the template's `ENV` on top.
    static func baseEnv(_ config: ImageConfig) -> [(String, String)] {
        var env: [(String, String)] = [
            ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("HOME", config.home), ("USER", config.user), ("LOGNAME", config.user), ("SHELL", "/bin/bash"),
            ("LANG", "C.UTF-8"), ("PYTHONUNBUFFERED", "1"),
        ]
        for (k, v) in config.env.sorted(by: { $0.key < $1.key }) {
            env.removeAll { $0.0 == k }
            env.append((k, v))
        }
        return env
    }

    func liveRuntime(_ id: String, caller: Caller) async throws -> SandboxRuntime {
        if let rt = try runtime(id, caller: caller), !rt.hasExited { return rt }
        let r = try await sandbox(id, caller: caller)
        throw SandpitError(.invalidState, "sandbox \(id) is \(r.state.rawValue)" + (r.stateReason.map { " (\($0))" } ?? ""),
                           details: ["state": .string(r.state.rawValue)])
    }

    /// Starts a command. With `awaitStart` it returns once the command runs
    /// (or failed to start); without, at once (a foreground caller reads the
    /// outcome from the session anyway, and saves a thread hop).
    public func exec(_ id: String, _ req: ExecRequest, caller: Caller, awaitStart: Bool = true,
                     admit: AdmissionTicket? = nil) async throws -> ExecSession {
        let woke = try await wake(id, caller: caller, admit: admit)
        if !req.service { try await admitExec(admit ?? AdmissionTicket(client: caller.uid)) }
        let rt: SandboxRuntime
        do { rt = try await liveRuntime(id, caller: caller) } catch {
            if !req.service { admission.release(.exec) }
            throw error
        }
        return try await startExec(in: rt, req, woke: woke, awaitStart: awaitStart)
    }

    /// `exec` once the sandbox is awake and the exec admitted (a non-service
    /// exec's slot is released when it finishes, or here if it cannot start).
    func startExec(in rt: SandboxRuntime, _ req: ExecRequest, woke: Wake? = nil, awaitStart: Bool = true) async throws -> ExecSession {
        let id = rt.id
        var execAdmitted = !req.service
        defer { if execAdmitted { admission.release(.exec) } }
        try rt.checkTimeout(req.timeoutMs)
        let epoch = rt.restores.load(ordering: .acquiring)
        let (n, seq) = rt.state.withLock { s -> (UInt32, Int) in
            s.record.execSeq += 1
            s.record.lastActiveAt = Clock.nowMs()
            return (UInt32(s.record.execSeq), s.record.execSeq)
        }
        // A service exec's output is consumed as it arrives (and then dropped), so nothing may be cut from it.
        let budget = req.service ? Int.max / 4 : Int(rt.policy.outputBytes ?? 16 << 20)
        let session = ExecSession(sandboxId: id, numericId: n, command: req.argv, outputBudget: budget,
                                  receivedNs: req.receivedNs, input: req.pty != nil ? .terminal : req.stdinPipe ? .pipe : .none,
                                  logPath: req.service ? nil : logsDir(id) + "/ex_\(n)")
        session.wake = woke
        if !req.service {
            session.onUnreadLimit.withLock {
                $0 = { [weak rt, weak session] in
                    guard let rt, let session else { return }
                    session.markKilled(by: "its output went unread: \(ExecSession.unreadOutputLimit >> 20) MiB since anyone last read it")
                    rt.noteDaemonKill(session)
                    rt.signal(exec: session.numericId, SIGKILL)
                }
            }
        }
        execAdmitted = false   // released when the exec finishes
        rt.register(session)
        if !req.service { rt.idle.withLock { $0.begin(now: Clock.nowMs()) } }

        let config = rt.image.config
        var env = Self.commandEnv(rt, req.env, asRoot: req.asRoot && !req.service)
        if req.pty != nil && !env.contains(where: { $0.0 == "TERM" }) { env.append(("TERM", "xterm-256color")) }
        var payload: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v) { payload += $0 } }
        let uid = req.asRoot ? 0 : config.uid
        u32(uid); u32(req.asRoot ? 0 : config.gid)
        // Root keeps a container root's capabilities: asked for (`user: "root"`), or the template's USER;
        // never a zygote's interpreter (a service exec as root), which owns its nested namespaces without them.
        let rootCaps = uid == 0 && !req.service && !req.placeholder
        u32((req.stdin != nil || req.service || req.stdinPipe ? SP_SPAWN_STDIN : 0) | (req.placeholder ? SP_SPAWN_PLACEHOLDER : 0)
            | (req.pty != nil ? SP_SPAWN_PTY : 0) | (rootCaps ? SP_SPAWN_ROOT_CAPS : 0))
        u32(UInt32(req.argv.count)); u32(UInt32(env.count))
        u32(req.pty.map { UInt32(min(max($0.rows, 1), 0xffff)) << 16 | UInt32(min(max($0.cols, 1), 0xffff)) } ?? 0)
        func str(_ s: String) { payload += Array(s.utf8); payload.append(0) }
        str(req.cwd ?? config.workdir)
        for a in req.argv { str(a) }
        for (k, v) in env { str(k + "=" + v) }
        guard payload.count <= Int(SP_FRAME_MAX_PAYLOAD) else {
            throw SandpitError(.limitExceeded, "command and environment exceed \(SP_FRAME_MAX_PAYLOAD) bytes")
        }
        session.markSpawnSent(Clock.monotonicNs())
        rt.send(type: SP_FRAME_SPAWN.rawValue, id: n, payload: payload)
        // Read while the agent forks (a cgroup file read is ~25 µs): nothing
        // the command does can be OOM-killed before it has even exec'd.
        rt.noteOOMBaseline(n)
        if let input = req.stdin {
            var off = 0
            while off < input.count {
                let end = min(off + Int(SP_OUTPUT_CHUNK), input.count)
                rt.send(type: SP_FRAME_STDIN.rawValue, id: n, payload: Array(input[off..<end]))
                off = end
            }
            session.inputSent(UInt64(input.count))
            if !req.stdinPipe && req.pty == nil { rt.send(type: SP_FRAME_STDIN.rawValue, id: n, payload: []) }
        }
        let record = rt.record
        let cat = catalog
        let startedAt = Clock.nowMs()
        let timeout = req.service ? nil : req.timeoutMs ?? rt.policy.execTimeoutMs.map { Int($0) }
        var timer: Task<Void, Never>?
        if let t = timeout {
            let deadline = ContinuousClock.now + .milliseconds(t)
            timer = Task { [weak rt] in await Self.enforceTimeout(session, rt, deadline: deadline) }
        }
        // One task records the exec's start, waits for its end and records that,
        // so the two catalog writes can never land out of order. A crash between
        // them is reconciled on start (running execs become lost).
        Task(executorPreference: ControlLoop.executor) { [weak rt, weak self, timer] in
            try? await cat.insertExec(ExecRecord(sandboxId: id, execId: session.execId, command: req.argv, state: .running,
                                                 startedAt: startedAt), sandboxStep: record.step, execSeq: seq, lastActiveAt: startedAt)
            let o = await session.waitFinished()
            timer?.cancel()
            if !req.service { self?.admission.release(.exec) }
            guard let rt, let self else {
                session.markRecorded(.init(step: record.step, checkpoint: nil, checkpointError: "sandbox gone"))
                return
            }
            let rec = req.service ? ExecSession.StepRecord(step: rt.record.step, checkpoint: nil, checkpointError: nil) : await self.recordStep(rt, epoch: epoch)
            if !req.service { rt.idle.withLock { $0.end(now: Clock.nowMs()) } }
            session.markRecorded(rec)
            let step = rec.step
            try? await cat.finishExec(ExecRecord(
                sandboxId: id, execId: session.execId, command: req.argv, state: o.spawnError == nil ? .exited : .failed,
                exitCode: o.exitCode, signal: o.signal.map { Int($0) }, timedOut: o.timedOut, startedAt: startedAt,
                endedAt: Clock.nowMs(), stdoutBytes: o.stdoutBytes, stderrBytes: o.stderrBytes), sandboxStep: step)
        }
        if awaitStart { await session.waitStarted() }
        return session
    }

    static func enforceTimeout(_ session: ExecSession, _ rt: SandboxRuntime?, deadline: ContinuousClock.Instant) async {
        do { try await Task.sleep(until: deadline) } catch { return }
        guard let rt, !session.isFinished else { return }
        session.markTimedOut()
        rt.noteDaemonKill(session)
        rt.signal(exec: session.numericId, SIGKILL)
    }

    public func kill(_ id: String, execId: String, signal: Int32, caller: Caller) async throws {
        _ = try await wake(id, caller: caller)
        let rt = try await liveRuntime(id, caller: caller)
        guard let s = rt.session(named: execId) else { throw SandpitError.notFound("Exec", execId) }
        // Sent even when the command has ended: the agent signals whatever
        // the command left running in its cgroup (a fork bomb's remains, say).
        if signal == SIGKILL { rt.noteDaemonKill(s) }
        rt.signal(exec: s.numericId, signal)
    }

    /// Writes to a running exec's stdin (a pipe, or typed into its terminal),
    /// with backpressure: at most `ExecSession.inputWindow` bytes may wait in
    /// the sandbox; a write waits for room, up to `waitMs`, then fails with
    /// `limit_exceeded`. `eof` closes a pipe, or types ^D into a terminal.
    public func input(_ id: String, execId: String, _ bytes: [UInt8], eof: Bool, waitMs: Int = 10_000, caller: Caller) async throws {
        let rt = try await liveRuntime(id, caller: caller)
        guard let s = rt.session(named: execId) else { throw SandpitError.notFound("Exec", execId) }
        guard s.input != .none else {
            throw SandpitError(.invalidState, "exec \(execId) has no open stdin: start it with stdin: \"pipe\" or pty")
        }
        // Closing the stdin of a command that has already ended has nothing left to do.
        if bytes.isEmpty && eof && s.isFinished { return }
        try s.checkInputOpen()
        var off = 0
        while off < bytes.count {
            let end = min(off + Int(SP_OUTPUT_CHUNK), bytes.count)
            try await s.reserveInput(UInt64(end - off), waitMs: waitMs)
            let chunk = Array(bytes[off..<end])
            if s.input == .terminal { s.append(.stdin, chunk) }
            rt.send(type: SP_FRAME_STDIN.rawValue, id: s.numericId, payload: chunk)
            off = end
        }
        if eof {
            s.closeInput()
            rt.send(type: SP_FRAME_STDIN.rawValue, id: s.numericId, payload: [])
        }
        rt.idle.withLock { $0.touch(now: Clock.nowMs()) }
    }

    /// Sets a PTY exec's window size; its foreground process group gets SIGWINCH.
    public func resize(_ id: String, execId: String, rows: Int, cols: Int, caller: Caller) async throws {
        let rt = try await liveRuntime(id, caller: caller)
        guard let s = rt.session(named: execId) else { throw SandpitError.notFound("Exec", execId) }
        guard s.input == .terminal else { throw SandpitError(.invalidState, "exec \(execId) has no terminal: start it with pty") }
        var payload: [UInt8] = []
        withUnsafeBytes(of: UInt16(rows)) { payload += $0 }
        withUnsafeBytes(of: UInt16(cols)) { payload += $0 }
        rt.send(type: SP_FRAME_RESIZE.rawValue, id: s.numericId, payload: payload)
    }

    public enum Logs: Sendable {
        case live(ExecSession)
        case archived(ExecRecord)
    }

    public func logs(_ id: String, execId: String, caller: Caller) async throws -> Logs {
        if let rt = try runtime(id, caller: caller), let s = rt.session(named: execId) { return .live(s) }
        _ = try await sandbox(id, caller: caller)
        guard let r = try await catalog.exec(id, execId) else { throw SandpitError.notFound("Exec", execId) }
        return .archived(r)
    }

    public func agentStats(_ id: String, caller: Caller) async throws -> UInt64 {
        let rt = try await liveRuntime(id, caller: caller)
        return await rt.stats()
    }

    // MARK: shutdown

    /// Stops accepting work and tears sandboxes down. With `keep`, their files
    /// stay and they are listed as stopped; otherwise they are deleted.
    public func shutdown(keep: Bool) async {
        closing.store(true, ordering: .relaxed)
        idleService.withLock { $0 }?.cancel()
        while refilling.load(ordering: .acquiring) || !templateRefills.withLock({ $0.isEmpty }) {
            try? await Task.sleep(for: .milliseconds(5))
        }
        let warm = warmPool.withLock { p -> [SandboxRuntime] in defer { p = [] }; return p }
            + templatePools.withLock { p -> [SandboxRuntime] in defer { p = [:] }; return p.values.flatMap { $0 } }
        for rt in warm { await discard(rt) }
        let all = registry.withLock { Array($0.values) }
        await withTaskGroup(of: Void.self) { g in
            for rt in all {
                g.addTask {
                    if keep {
                        // Let a step that is still being recorded finish first.
                        _ = try? await rt.steps.run {}
                        guard await self.teardown(rt) else { return }
                        try? self.catalog.setState(rt.id, .hibernated, reason: "daemon stopped; files kept, processes lost")
                    } else {
                        try? await self.delete(rt.id, caller: .inProcess)
                    }
                }
            }
        }
        // Last: sandboxes nested in a zygote die with it.
        await discardZygotes()
        await checkpointLog.flush()
        // Every sandbox is gone: a group still here is one whose teardown found it busy (a process
        // not yet released, such as a retired zygote's) and gave up. Its processes are gone by now.
        for name in cgroups.existing() {
            do { try cgroups.handle(name).destroy() } catch {
                logger.warning("a sandbox's cgroup could not be removed at shutdown", metadata: ["cgroup": "\(name)", "error": "\(error)"])
            }
        }
        cgroups.removeParent()
        hostUsr?.close()
        storage.release()
    }
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}

/// Gives freed heap memory back to the system a moment after sandboxes go:
/// glibc keeps freed arenas mapped, so a daemon that held many exec outputs
/// would otherwise keep their RSS after the sandboxes are deleted. Calls
/// within the delay coalesce into one trim, off every request's path.
enum MemoryTrim {
    private static let scheduled = Atomic<Bool>(false)

    static func soon() {
        guard scheduled.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        Task.detached(priority: .background) {
            try? await Task.sleep(for: .milliseconds(500))
            scheduled.store(false, ordering: .releasing)
            _ = sp_malloc_trim()
        }
    }
}
