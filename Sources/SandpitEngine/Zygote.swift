#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import SandpitCore
import SandpitOS
import Synchronization

/// A PRELOAD template's warm parent: a sandbox of that template and policy
/// whose Python driver has imported the template's modules and then only
/// forks copies of itself into new sandboxes. No cell ever runs in it; only
/// the template's own code (the imports) has.
///
/// A copy can enter a new sandbox only with privilege over that sandbox's
/// namespaces, so those sandboxes are nested: the zygote's agent clones each
/// one's first process (NEST) into user and pid namespaces that are children
/// of the zygote's, and the zygote's interpreter (root of the zygote's user
/// namespace, without capabilities) owns them. Inside, each is an ordinary
/// sandbox: its own agent as PID 1 with the usual mounts, network, hardening
/// and seccomp filter, its own cgroup, disk and checkpoints. Nothing in it can
/// reach the zygote: a child namespace holds no privilege over its parent, and
/// the copy gives up root, capabilities and every descriptor of the zygote's
/// before it runs a cell. See docs/ARCHITECTURE.md ("Warm templates") and
/// docs/SECURITY.md for what the sandboxes do share (one address-space layout).
///
/// A nested sandbox dies with its zygote (the kernel ends a pid namespace's
/// children with it), so a zygote is retired, not killed, while any remain.
final class Zygote: Sendable {
    let key: String
    let rt: SandboxRuntime
    /// The zygote's driver, in `--zygote` mode.
    let driver: InterpreterContext
    /// Our end of the socket nested sandboxes' descriptors go over.
    let nestSocket: FileDescriptor
    /// One nested sandbox at a time: descriptors, NEST and its answer are paired.
    let lock = StepLock()
    /// Sandboxes nested in it whose agents still run.
    let children = Atomic<Int>(0)
    /// No new sandboxes from it; it goes once its last child has.
    let retired = Atomic<Bool>(false)

    init(key: String, rt: SandboxRuntime, driver: InterpreterContext, nestSocket: FileDescriptor) {
        self.key = key
        self.rt = rt
        self.driver = driver
        self.nestSocket = nestSocket
    }

    var usable: Bool { !retired.load(ordering: .acquiring) && !rt.hasExited && !driver.isDead }
}

extension Engine {
    // MARK: zygotes

    /// The ready zygote for a template and policy; starts it (and waits for
    /// its imports) when there is none yet. nil when one cannot be had: it
    /// failed to start before (the cold path is used from then on) or the
    /// daemon is closing.
    func zygote(_ templateId: String, name: String, policy: String) async -> Zygote? {
        let key = templateId + " " + policy
        if let z = zygotes.withLock({ $0[key] }) {
            if z.usable { return z }
            // It died (killed from outside, out of memory): replace it.
            zygotes.withLock { if $0[key] === z { $0[key] = nil } }
            logger.warning("a template's zygote died; starting another", metadata: ["template": "\(name)"])
            if z.children.load(ordering: .acquiring) == 0 { await discard(z.rt) } else { z.retired.store(true, ordering: .releasing) }
        }
        guard !closing.load(ordering: .relaxed), zygoteStarts.withLock({ $0[key] }) != false else { return nil }
        zygoteStarts.withLock { $0[key] = true }
        var started: SandboxRuntime?
        do {
            var plan = try plan(policy: policy)
            plan.useScratchDisk()   // what the imports write (bytecode caches) is not kept
            let now = Clock.nowMs()
            let record = SandboxRecord(id: Identifier.make("sb"), state: .starting, template: name, policy: plan.policy.name,
                                       metadata: [:], createdAt: now, lastActiveAt: now, templateId: templateId)
            var sv: [Int32] = [-1, -1]
            _ = try sys("socketpair") { sp_socketpair_cloexec(&sv) }
            let mine = FileDescriptor(sv[0]), theirs = FileDescriptor(sv[1])
            let rt = try await launch(record, plan: plan, role: .zygote(nestSocket: theirs))
            theirs.close()
            started = rt
            let nonce = Identifier.secret(16)
            let preload = rt.image.config.preload
            var req = ExecRequest(argv: ["python3", "-u", "-c", ContextDrivers.pythonBootstrap, nonce, "--zygote",
                                         "--preload", preload.joined(separator: ",")],
                                  env: ["SANDPIT_DRIVER": ContextDrivers.python])
            req.service = true
            req.asRoot = true
            let session = try await startExec(in: rt, req)
            if let err = session.outcome?.spawnError {
                throw SandpitError(.invalidState, "cannot start the template's zygote: \(err) (the template needs python3)")
            }
            let driver = InterpreterContext(id: "zygote", language: "python", session: session, nonce: nonce)
            Task { await driver.pump() }
            try await driver.waitReady()
            let z = Zygote(key: key, rt: rt, driver: driver, nestSocket: mine)
            if closing.load(ordering: .relaxed) { await discard(rt); return nil }
            zygotes.withLock { $0[key] = z }
            zygoteStarts.withLock { $0[key] = nil }
            logger.info("template zygote ready", metadata: ["template": "\(name)", "policy": "\(policy)"])
            return z
        } catch {
            if let rt = started { await discard(rt) }
            zygoteStarts.withLock { $0[key] = false }
            logger.warning("a template's zygote could not start; its sandboxes start cold", metadata: ["template": "\(name)", "error": "\(error)"])
            return nil
        }
    }

    /// Starts a nested sandbox's agent through the zygote's agent (NEST): the
    /// descriptors go over the nest socket, the pidfd comes back on it.
    func spawnNested(in z: Zygote, argv: [String], rootMount: FileDescriptor, usrMount: FileDescriptor?,
                     devMount: FileDescriptor, cgroupDir: FileDescriptor?, prepare: (Int32) throws -> Void) async throws -> SandboxSpawner.Spawned {
        guard z.usable else { throw SandpitError(.sandboxFailed, "the template's zygote is gone") }
        var sv: [Int32] = [-1, -1]
        _ = try sys("socketpair") { sp_socketpair_cloexec(&sv) }
        let control = FileDescriptor(sv[0]), agentEnd = FileDescriptor(sv[1])
        var gp: [Int32] = [-1, -1]
        _ = try sys("pipe2") { sp_pipe_cloexec(&gp) }
        let goRead = FileDescriptor(gp[0]), goWrite = FileDescriptor(gp[1])
        var fds = [agentEnd.raw, rootMount.raw]
        var mask: UInt32 = 0
        if let u = usrMount { fds.append(u.raw); mask |= SP_NEST_USR }
        if let c = cgroupDir { fds.append(c.raw); mask |= SP_NEST_CGROUP }
        fds.append(devMount.raw); mask |= SP_NEST_DEV
        fds += [agentFd.raw, goRead.raw]
        var payload: [UInt8] = []
        for v in [config.ids.count, mask, UInt32(argv.count)] { withUnsafeBytes(of: v) { payload += $0 } }
        for a in argv { payload += Array(a.utf8); payload.append(0) }
        let socket = z.nestSocket.raw
        let (pidfd, pid): (Int32, Int32) = try await z.lock.run { [payload, fds] in
            try SandboxSpawner.sendDescriptors(fds, over: socket)
            guard let r = await z.rt.nest(payload) else { throw SandpitError(.sandboxFailed, "the template's zygote is gone") }
            guard r.value > 0 else {
                throw SandpitError(.sandboxFailed, "the template's zygote could not start a sandbox: \(r.text): \(String(cString: strerror(-r.value)))")
            }
            // The zygote's agent sends the pidfd right after its answer.
            let fd = try await EngineThread.run { try SandboxSpawner.receiveDescriptor(over: socket, timeoutMs: 5000) }
            do { return (fd, try SandboxSpawner.pid(ofPidfd: fd)) } catch { close(fd); throw error }
        }
        agentEnd.close()
        goRead.close()
        do {
            try prepare(pid)
        } catch {
            SandboxSpawner.kill(pidfd: pidfd)
            close(pidfd)
            throw error
        }
        var go: UInt8 = 1
        _ = write(goWrite.raw, &go, 1)
        goWrite.close()
        z.children.add(1, ordering: .acquiringAndReleasing)
        let fd = dup(control.raw)   // the runtime owns its control socket from here on
        control.close()
        guard fd >= 0 else {
            SandboxSpawner.kill(pidfd: pidfd)
            throw OSError(call: "dup", errno: errno)
        }
        return SandboxSpawner.Spawned(pid: pid, pidfd: pidfd, controlFd: fd, nested: true)
    }

    /// A nested sandbox's agent has gone: a retired zygote with no children left goes too.
    func releaseZygoteChild(_ z: Zygote) async {
        if z.children.subtract(1, ordering: .acquiringAndReleasing).newValue == 0, z.retired.load(ordering: .acquiring) {
            await discard(z.rt)
        }
    }

    /// No new sandboxes from this template's zygotes (it is being deleted);
    /// each goes once no sandbox nested in it is left.
    func retireZygotes(_ templateId: String) async {
        let gone = zygotes.withLock { m -> [Zygote] in
            let keys = m.keys.filter { $0.hasPrefix(templateId + " ") }
            return keys.compactMap { m.removeValue(forKey: $0) }
        }
        for z in gone {
            z.retired.store(true, ordering: .releasing)
            if z.children.load(ordering: .acquiring) == 0 { await discard(z.rt) }
        }
    }

    /// At shutdown, after every sandbox is gone.
    func discardZygotes() async {
        let all = zygotes.withLock { m -> [Zygote] in defer { m = [:] }; return Array(m.values) }
        for z in all {
            z.retired.store(true, ordering: .releasing)
            await discard(z.rt)
        }
    }

    /// Gives a nested sandbox its default Python context: a copy of the
    /// zygote's interpreter. A placeholder exec holds the pipes (and the exec
    /// cgroup) a context's driver would have; the copy joins the sandbox's
    /// namespaces, takes those pipes, and once it is in the sandbox's cgroup
    /// and its agent has made it the exec's process (RESTORE), drops to the
    /// sandbox user with the sandbox's seccomp filter and says ready.
    func nestInterpreter(_ z: Zygote, into rt: SandboxRuntime) async throws {
        let keep = InterpreterContext.copiesKept(language: "python", in: rt)
        var hold = ExecRequest(argv: ["sandpit-placeholder"])
        hold.service = true
        hold.placeholder = true
        let session = try await startExec(in: rt, hold)
        if let err = session.outcome?.spawnError { throw SandpitError(.sandboxFailed, "cannot start the interpreter's placeholder: \(err)") }
        // The agent's pid in the zygote's namespace: one level in from ours.
        guard let holder = session.pid, let levels = SandboxSpawner.nsPids(of: rt.spawned.pid), levels.count > 1 else {
            throw SandpitError(.sandboxFailed, "the nested sandbox's processes are not where expected")
        }
        var program = [UInt8](repeating: 0, count: 8192)
        let flags: UInt32 = rt.plan.restrictSockets ? SP_SECCOMP_RESTRICT_SOCKETS : 0
        let n = rt.plan.seccompEnabled ? sp_seccomp_program(flags, &program, program.count) : 0
        let hex = program.prefix(n).map { b in String(b, radix: 16).count == 1 ? "0" + String(b, radix: 16) : String(b, radix: 16) }.joined()
        let config = rt.image.config
        var env: JSONObject = [:]
        for (k, v) in Self.commandEnv(rt, [:]) { env[k] = .string(v) }
        let nonce = Identifier.secret(16)
        let request: JSONObject = [
            "id": .string(rt.id), "agent": .int(Int64(levels[1])), "placeholder": .int(Int64(holder)), "nonce": .string(nonce),
            "uid": .int(Int64(config.uid)), "gid": .int(Int64(config.gid)), "cwd": .string(config.workdir), "env": .object(env),
            "nofile": .int(rt.policy.openFiles ?? 0), "seccomp": .string(hex), "snapshots": .bool(keep > 0),
        ]
        let t0 = Clock.monotonicNs()
        let answer = try await z.lock.run { try await withDeadline(seconds: 10, "the template's zygote did not answer") { try await z.driver.nest(request, rt: z.rt) } }
        guard let copy = answer["pid"]?.intValue.map({ Int32(truncatingIfNeeded: $0) }) else {
            throw SandpitError(.sandboxFailed, "the template's zygote could not fork into the sandbox: \(answer["error"]?.stringValue ?? "no answer")")
        }
        let t1 = Clock.monotonicNs()
        // The copy is the agent's child now. Into the sandbox's cgroup (and its exec's) before it may go on.
        guard let host = SandboxSpawner.children(of: rt.spawned.pid).first(where: { SandboxSpawner.nsPids(of: $0)?.last == copy }) else {
            throw SandpitError(.sandboxFailed, "the interpreter's copy is not the sandbox agent's child")
        }
        try rt.cgroup.addProcess(host, toExecGroup: session.execId)
        guard let r = await rt.killAllBut(keep: [copy], adopt: [(session.numericId, copy)]), r.alive == 0 else {
            throw SandpitError(.sandboxFailed, "the sandbox's agent could not take over the interpreter's copy")
        }
        let ctx = InterpreterContext(id: Self.defaultContextId, language: "python", session: session, nonce: nonce, in: rt)
        Task { await ctx.pump() }
        rt.send(type: SP_FRAME_STDIN.rawValue, id: session.numericId, payload: Array("go\n".utf8))
        try await withDeadline(seconds: 10, "the interpreter's copy did not start in its sandbox") { try await ctx.waitReady() }
        rt.contexts.withLock { $0[Self.defaultContextId] = ctx }
        logger.debug("interpreter forked into sandbox", metadata: ["sandbox": "\(rt.id)", "forkMs": "\((t1 - t0) / 1_000_000)",
                                                                   "handoverMs": "\((Clock.monotonicNs() - t1) / 1_000_000)"])
    }
}
