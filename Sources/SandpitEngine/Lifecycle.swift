#if canImport(Glibc)
import Glibc
#endif
import SandpitCore
import SandpitOS

/// What waking a sandbox did, for the response that caused it.
public struct Wake: Sendable {
    public var from: String            // "paused" or "hibernated"
    public var restored: [String]
    public var lost: [String]
    public var ms: Double

    public var json: JSONValue {
        .object(["from": .string(from), "restored": .array(restored.map { .string($0) }),
                 "lost": .array(lost.map { .string($0) }), "ms": .double((ms * 1000).rounded() / 1000)])
    }
}

/// Idle lifecycle: pause (cgroup freezer), hibernate (checkpoint, then stop
/// everything but the files), delete; wake on demand. The policy is the pure
/// `IdleTracker`; this runs it.
extension Engine {
    static let idleTickMs = 200

    /// Evaluates every sandbox's idle state machine a few times a second.
    func startIdleService() {
        let task = Task.detached(priority: .utility) { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Self.idleTickMs))
                guard let self, !self.closing.load(ordering: .relaxed) else { return }
                await self.idleTick()
            }
        }
        idleService.withLock { $0 = task }
    }

    /// The policy's retention: an idle sandbox nobody holds is deleted, logged
    /// and reported to watchers (`sandbox.state` with the reason).
    func deleteForRetention(_ id: String, idleMs: Int64) async throws {
        let reason = "retention: idle for \(IdlePolicy.describe(ms: idleMs)) (the policy's idle.deleteAfterMs)"
        logger.info("deleting an idle sandbox", metadata: ["sandbox": "\(id)", "reason": "\(reason)"])
        try await delete(id, caller: .inProcess, reason: reason)
    }

    /// Every 10 s: the catalog's disk reserve is made again once there is
    /// room, and its loss (the data dir's disk filled up) is logged once.
    func checkDiskReserve(now: Int64) {
        let due = reserveCheck.withLock { last -> Bool in
            guard now - last >= 10_000 else { return false }
            last = now
            return true
        }
        guard due else { return }
        let had = reserveHeld.load(ordering: .relaxed)
        let has = catalog.reserve.ensure() && catalog.startReserve.ensure()
        reserveHeld.store(has, ordering: .relaxed)
        if had && !has {
            logger.error("the data dir's disk is full: the catalog is using its reserve; free space (delete sandboxes, checkpoints or other files on it)",
                         metadata: ["dataDir": "\(config.dataDir)"])
        } else if !had && has {
            logger.info("the data dir's disk has room again; the catalog's reserve is back", metadata: ["dataDir": "\(config.dataDir)"])
        }
    }

    func idleTick() async {
        let now = Clock.nowMs()
        checkDiskReserve(now: now)
        for rt in registry.withLock({ Array($0.values) }) {
            // Background processes: only worth counting when an action is due, or while they are
            // what keeps the sandbox awake (once they end, nothing else would clear the flag).
            let (due, held) = rt.idle.withLock { ($0.due(now: now), $0.backgroundProcesses) }
            guard due != nil || held else { continue }
            if rt.plan.idle.backgroundKeepsAwake && due != .delete {
                // All but the agent (and its spare), each context's interpreter and its frozen copies.
                let contexts = rt.contexts.withLock { $0.values.filter { !$0.isDead } }.reduce(0) { $0 + 1 + $1.copyPids.count }
                let others = rt.cgroup.processesButSpare().count - 1 - contexts
                let bg = others > 0
                rt.idle.withLock { $0.backgroundProcesses = bg }
                if bg { continue }
            }
            guard let action = rt.idle.withLock({ $0.due(now: now) }) else { continue }
            do {
                switch action {
                case .pause: try await pause(rt, reason: "idle")
                case .hibernate: try await hibernate(rt, reason: "idle")
                case .delete:
                    if rt.record.keep {   // marked keep: hibernate instead, never deleted for idleness
                        if rt.idle.withLock({ $0.phase }) != .hibernated { try await hibernate(rt, reason: "idle") }
                    } else {
                        try await deleteForRetention(rt.id, idleMs: rt.idle.withLock { $0.idleMs(now: now) })
                    }
                }
            } catch {
                logger.warning("idle action failed", metadata: ["sandbox": "\(rt.id)", "action": "\(action.rawValue)", "error": "\(error)"])
                rt.idle.withLock { $0.touch(now: now) }   // try again after another idle period, not every tick
            }
        }
        for (id, tracker) in dormant.withLock({ $0 }) where tracker.due(now: now) == .delete {
            if (try? await catalog.sandbox(id))?.keep == true {
                dormant.withLock { $0[id]?.policy.deleteAfterMs = nil }
                continue
            }
            do { try await deleteForRetention(id, idleMs: tracker.idleMs(now: now)) } catch {
                logger.warning("idle delete failed", metadata: ["sandbox": "\(id)", "error": "\(error)"])
            }
        }
    }

    // MARK: explicit operations

    public func pause(_ id: String, caller: Caller) async throws -> SandboxRecord {
        let rt = try await liveRuntime(id, caller: caller)
        try await pause(rt, reason: "requested")
        return rt.record
    }

    public func resume(_ id: String, caller: Caller) async throws -> (SandboxRecord, Wake?) {
        let w = try await wake(id, caller: caller)
        return (try await sandbox(id, caller: caller), w)
    }

    public func hibernate(_ id: String, caller: Caller) async throws -> SandboxRecord {
        let r = try await sandbox(id, caller: caller)
        if r.state == .hibernated { return r }
        let rt = try await liveRuntime(id, caller: caller)
        try await hibernate(rt, reason: "requested")
        return try await sandbox(id, caller: caller)
    }

    /// Holds the sandbox awake for `forMs` whatever else happens (waking it first).
    public func keepalive(_ id: String, forMs: Int64, caller: Caller) async throws -> (SandboxRecord, Wake?) {
        let w = try await wake(id, caller: caller)
        let rt = try await liveRuntime(id, caller: caller)
        let now = Clock.nowMs()
        rt.idle.withLock { $0.lease(until: now + forMs, now: now) }
        return (rt.record, w)
    }

    /// A connection holds the sandbox awake until `release`.
    public func hold(_ id: String, caller: Caller) throws(SandpitError) {
        try runtime(id, caller: caller)?.idle.withLock { $0.hold() }
    }

    public func release(_ id: String) {
        registry.withLock { $0[id] }?.idle.withLock { $0.release(now: Clock.nowMs()) }
    }

    // MARK: transitions

    /// Freezes every process of the sandbox. Only an idle sandbox (or on request) is paused.
    func pause(_ rt: SandboxRuntime, reason: String) async throws {
        try await rt.steps.run { [self] in
            guard rt.idle.withLock({ $0.phase }) == .running, !rt.hasExited else { return }
            guard rt.cgroup.freezerDir != nil else {
                throw SandpitError(.unavailable, "sandbox \(rt.id) cannot be paused: it has no cgroup freezer (" + (rt.plan.useCgroup ? "this daemon has no cgroups it may use: rootless without a delegated cgroup v2 subtree" : "its policy turns cgroups off") + "); it keeps running. Idle sandboxes are hibernated instead")
            }
            try rt.cgroup.freeze()
            rt.idle.withLock { $0.moved(to: .paused, now: Clock.nowMs()) }
            rt.state.withLock { $0.record.state = .paused; $0.record.stateReason = reason }
            try await catalog.updateSandbox(rt.record)
            await catalog.event("paused", sandbox: rt.id, detail: reason)
            emit(rt.id, .paused, reason: reason)
        }
    }

    /// Checkpoints the files (when the sandbox has its own disk), then stops
    /// every process and frees its memory, mounts and cgroup. Files stay.
    func hibernate(_ rt: SandboxRuntime, reason: String) async throws {
        guard !rt.plan.scratchDisk else {
            throw SandpitError(.invalidState, "sandbox \(rt.id) keeps its files in a scratch tmpfs (a batch task's sandbox): hibernating would lose them")
        }
        let ok = try await rt.steps.run { [self] () async throws -> Bool in
            guard !rt.hasExited else { return false }
            if rt.idle.withLock({ $0.phase }) == .paused { rt.cgroup.thaw() }
            if rt.disk != nil, rt.policy.checkpoints != .off {
                _ = try await snapshot(rt, name: "hibernate")
            }
            return await teardown(rt)
        }
        guard ok else { return }
        var r = rt.record
        r.state = .hibernated
        r.stateReason = reason == "idle" ? "idle: files kept, processes stopped" : "hibernated on request: files kept, processes stopped"
        try await catalog.updateSandbox(r)
        dormant.withLock { $0[r.id] = IdleTracker(policy: rt.plan.idle, phase: .hibernated, now: Clock.nowMs()) }
        dormantPlans.withLock { $0[r.id] = rt.plan }
        await catalog.event("hibernated", sandbox: r.id, detail: reason)
        emit(r.id, .hibernated, reason: r.stateReason, owner: r.owner)
    }

    /// Brings a paused or hibernated sandbox back; nil when it was running.
    /// Concurrent callers share one wake.
    public func wake(_ id: String, caller: Caller, admit: AdmissionTicket? = nil) async throws -> Wake? {
        if let rt = try runtime(id, caller: caller), !rt.hasExited {
            rt.idle.withLock { $0.touch(now: Clock.nowMs()) }
            guard rt.idle.withLock({ $0.phase }) == .paused else { return nil }
            let t0 = Clock.monotonicNs()
            try await rt.steps.run { [self] in
                guard rt.idle.withLock({ $0.phase }) == .paused else { return }
                rt.cgroup.thaw()
                rt.idle.withLock { $0.moved(to: .running, now: Clock.nowMs()) }
                rt.state.withLock { $0.record.state = .running; $0.record.stateReason = nil }
                try await catalog.updateSandbox(rt.record)
            }
            let w = Wake(from: "paused", restored: ["processes", "memory", "filesystem"], lost: [], ms: Double(Clock.monotonicNs() - t0) / 1e6)
            emit(id, .running, reason: "woke", wake: w)
            return w
        }
        let r = try await sandbox(id, caller: caller)
        guard r.state == .hibernated else { return nil }
        let task = waking.withLock { w -> Task<Wake, Error> in
            if let t = w[id] { return t }
            let ticket = admit ?? AdmissionTicket(client: caller.uid)
            let t = Task { try await self.revive(r, ticket) }
            w[id] = t
            return t
        }
        defer { waking.withLock { _ = $0.removeValue(forKey: id) } }
        return try await task.value
    }

    /// Starts a fresh agent on a hibernated sandbox's files.
    private func revive(_ r: SandboxRecord, _ ticket: AdmissionTicket) async throws -> Wake {
        let t0 = Clock.monotonicNs()
        if let rt = registry.withLock({ $0[r.id] }), !rt.hasExited {   // another wake won
            return Wake(from: "hibernated", restored: ["filesystem"], lost: ["processes", "memory"], ms: 0)
        }
        let plan = try dormantPlans.withLock({ $0[r.id] }) ?? self.plan(policy: r.policy)
        let memory = plan.policy.memoryBytes ?? 0
        try await admitSandbox(memory: memory, ticket)
        var admitted = true
        defer { if admitted { admission.release(.sandbox(memory: memory)) } }
        var record = r
        record.state = .starting
        let rt = try await launch(record, plan: plan, fresh: false)
        record.state = .running
        record.stateReason = nil
        record.lastActiveAt = Clock.nowMs()
        rt.state.withLock { $0.record = record }
        if let head = r.head { rt.headManifest.withLock { $0 = loadManifest(r.id, head) } }
        rt.admittedMemory.withLock { $0 = memory }
        admitted = false
        registry.withLock { $0[r.id] = rt }
        dormant.withLock { _ = $0.removeValue(forKey: r.id) }
        dormantPlans.withLock { _ = $0.removeValue(forKey: r.id) }
        try await catalog.updateSandbox(record)
        await catalog.event("woke", sandbox: r.id, detail: "from hibernation")
        let w = Wake(from: "hibernated", restored: ["filesystem"], lost: ["processes", "memory"] + (hadInterpreters(r.id) ? ["interpreter"] : []),
                     ms: Double(Clock.monotonicNs() - t0) / 1e6)
        emit(r.id, .running, reason: "woke", owner: r.owner, wake: w)
        return w
    }
}

/// A sandbox changed state (for `sandbox.state` notifications to watchers).
public struct StateEvent: Sendable {
    public var sandboxId: String
    public var owner: Int64
    public var state: SandboxState
    public var reason: String?
    public var wake: Wake?
}

extension Engine {
    /// Registers an observer of state changes; returns its token for `unobserve`.
    public func observe(_ f: @escaping @Sendable (StateEvent) -> Void) -> Int64 {
        observers.withLock { o in
            let t = (o.keys.max() ?? 0) + 1
            o[t] = f
            return t
        }
    }

    public func unobserve(_ token: Int64) { observers.withLock { _ = $0.removeValue(forKey: token) } }

    func emit(_ id: String, _ state: SandboxState, reason: String?, owner: Int64? = nil, wake: Wake? = nil) {
        let fs = observers.withLock { Array($0.values) }
        guard !fs.isEmpty else { return }
        let o = owner ?? registry.withLock { $0[id] }?.record.owner ?? -1
        let e = StateEvent(sandboxId: id, owner: o, state: state, reason: reason, wake: wake)
        for f in fs { f(e) }
    }
}
