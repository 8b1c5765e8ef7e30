#if canImport(Glibc)
import Glibc
#endif
import SandpitCore
import SandpitOS

extension Engine {
    // MARK: warm pool

    /// Takes a live pre-started sandbox for `policy`, if one is ready.
    /// Its agent must answer a ping first: a pooled sandbox can die unseen
    /// (killed from outside), and one that did is discarded, never handed out.
    func claimWarm(policy: String) async -> SandboxRuntime? {
        guard policy == config.warmPolicy else { return nil }
        while let rt = warmPool.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
            if await usable(rt) { return rt }
            Task { await self.discard(rt) }
        }
        return nil
    }

    /// True when a pooled sandbox's agent is alive and replies to a stats request within a second.
    func usable(_ rt: SandboxRuntime) async -> Bool {
        guard !rt.hasExited, SandboxSpawner.isAlive(pidfd: rt.spawned.pidfd) else { return false }
        return await withTaskGroup(of: Bool.self) { g in
            g.addTask { await rt.stats() > 0 }
            g.addTask { try? await Task.sleep(for: .seconds(1)); return false }
            defer { g.cancelAll() }
            return await g.next() ?? false
        }
    }

    /// Starts sandboxes in the background until the pool holds `config.warmPool`.
    /// One refill runs at a time; a failure is logged and retried on the next create.
    func refillWarmPool() {
        guard config.warmPool > 0, !closing.load(ordering: .relaxed),
              !refilling.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Task.detached(priority: .utility) { [self] in
            defer { refilling.store(false, ordering: .releasing) }
            // A client that just got a sandbox usually runs something in it at
            // once: stay off the CPU for that first request (2-core hosts feel it).
            try? await Task.sleep(for: .milliseconds(config.warmRefillDelayMs))
            while !closing.load(ordering: .relaxed), warmPool.withLock({ $0.count }) < config.warmPool,
                  liveCount + warmPool.withLock({ $0.count }) < config.maxSandboxes {
                do {
                    let plan = try plan(policy: config.warmPolicy)
                    let now = Clock.nowMs()
                    let record = SandboxRecord(id: Identifier.make("sb"), state: .starting, template: "default", policy: plan.policy.name,
                                               metadata: [:], createdAt: now, lastActiveAt: now)
                    let rt = try await launch(record, plan: plan)
                    if closing.load(ordering: .relaxed) { await discard(rt); return }
                    warmPool.withLock { $0.append(rt) }
                } catch {
                    logger.warning("warm pool refill failed", metadata: ["error": "\(error)"])
                    return
                }
            }
        }
    }

    // MARK: warm templates

    /// Takes a started sandbox of a PRELOAD template whose default Python
    /// context has already imported the modules, if one is ready.
    func claimWarmTemplate(_ templateId: String, policy: String) async -> SandboxRuntime? {
        let key = templateId + " " + policy
        while let rt = templatePools.withLock({ p -> SandboxRuntime? in p[key]?.isEmpty == false ? p[key]!.removeFirst() : nil }) {
            if await usable(rt), rt.contexts.withLock({ $0[Self.defaultContextId] }).map({ !$0.isDead }) == true {
                return rt
            }
            Task { await self.discard(rt) }
        }
        return nil
    }

    /// Keeps `config.warmTemplatePool` sandboxes of a PRELOAD template
    /// started, each with its default Python context ready (modules imported).
    /// Each is an ordinary sandbox of that template and policy: its own
    /// namespaces, disk, cgroup and interpreter; only the template's own code
    /// (the imports) has run in it when it is handed out. The first create of
    /// a template starts its pool; later creates take from it and refill it.
    func refillTemplatePool(_ templateId: String, name: String, policy: String) {
        let key = templateId + " " + policy
        guard config.warmTemplatePool > 0, !closing.load(ordering: .relaxed),
              templateRefills.withLock({ $0.insert(key).inserted }) else { return }
        Task.detached(priority: .utility) { [self] in
            defer { _ = templateRefills.withLock { $0.remove(key) } }
            try? await Task.sleep(for: .milliseconds(config.warmRefillDelayMs))
            while !closing.load(ordering: .relaxed), templatePools.withLock({ $0[key]?.count ?? 0 }) < config.warmTemplatePool,
                  liveCount + warmPool.withLock({ $0.count }) + templatePools.withLock({ $0.values.reduce(0) { $0 + $1.count } }) < config.maxSandboxes {
                var started: SandboxRuntime?
                do {
                    let plan = try plan(policy: policy)
                    let now = Clock.nowMs()
                    let record = SandboxRecord(id: Identifier.make("sb"), state: .starting, template: name, policy: plan.policy.name,
                                               metadata: [:], createdAt: now, lastActiveAt: now, templateId: templateId)
                    let rt = try await launch(record, plan: plan)
                    started = rt
                    _ = try await startContext(in: rt, language: "python", contextId: Self.defaultContextId)
                    // The first checkpoint of a sandbox is a whole one (freeze, sync, clone): take it now, with
                    // whatever the imports wrote (caches), so the first cell's is a diff against it.
                    if rt.disk != nil, rt.policy.checkpoints != .off {
                        let base = try await rt.steps.run { [self] in try await snapshotFiles(rt, name: "warm start", deferLinks: false).0 }
                        rt.warmBase.withLock { $0 = base }
                    }
                    if closing.load(ordering: .relaxed) { await discard(rt); return }
                    templatePools.withLock { $0[key, default: []].append(rt) }
                } catch {
                    if let rt = started { await discard(rt) }
                    logger.warning("warm template refill failed", metadata: ["template": "\(name)", "error": "\(error)"])
                    return
                }
            }
        }
    }

    /// Tears down a template's warm sandboxes (the template is going away).
    func discardTemplatePools(_ templateId: String) async {
        let gone = templatePools.withLock { p -> [SandboxRuntime] in
            let keys = p.keys.filter { $0.hasPrefix(templateId + " ") }
            return keys.flatMap { p.removeValue(forKey: $0) ?? [] }
        }
        for rt in gone { await discard(rt) }
    }

    /// Tears down a sandbox that was never handed out (no catalog record).
    func discard(_ rt: SandboxRuntime) async {
        await teardown(rt)
        try? FS.removeTree(storage.root + "/sandboxes/" + rt.id)
    }
}
