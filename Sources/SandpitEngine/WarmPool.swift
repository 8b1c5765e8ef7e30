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
                    // The first checkpoint of a sandbox is a whole one (its
                    // disk's first freeze and sync: ~40 ms here): taken now,
                    // while it waits, so the first step's is a diff against it.
                    if rt.disk != nil, rt.policy.checkpoints != .off {
                        let base = try await rt.steps.run { [self] in try await snapshotFiles(rt, name: "warm start") }
                        rt.warmBase.withLock { $0 = base }
                    }
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

    /// A started sandbox of a PRELOAD template whose default Python context
    /// already holds the imported modules: one from the pool if it is ready,
    /// else one forked from the template's zygote now, if that is ready.
    func claimWarmTemplate(_ templateId: String, name: String, policy: String) async -> SandboxRuntime? {
        let key = templateId + " " + policy
        while let rt = templatePools.withLock({ p -> SandboxRuntime? in p[key]?.isEmpty == false ? p[key]!.removeFirst() : nil }) {
            if await usable(rt), rt.contexts.withLock({ $0[Self.defaultContextId] }).map({ !$0.isDead }) == true {
                return rt
            }
            Task { await self.discard(rt) }
        }
        guard let z = zygotes.withLock({ $0[key] }), z.usable else { return nil }
        do {
            return try await warmTemplateSandbox(templateId, name: name, policy: policy, zygote: z)
        } catch {
            logger.warning("a sandbox from the template's zygote failed; starting cold", metadata: ["template": "\(name)", "error": "\(error)"])
            return nil
        }
    }

    /// A new sandbox of a PRELOAD template with its default Python context
    /// ready: forked from the zygote when there is one, else started cold
    /// (the imports run in it). The first checkpoint of a sandbox is a whole
    /// one (freeze, sync, clone): it is taken here, with whatever the imports
    /// wrote, so the first cell's is a diff against it.
    func warmTemplateSandbox(_ templateId: String, name: String, policy: String, zygote z: Zygote?) async throws -> SandboxRuntime {
        let plan = try plan(policy: policy)
        let now = Clock.nowMs()
        let record = SandboxRecord(id: Identifier.make("sb"), state: .starting, template: name, policy: plan.policy.name,
                                   metadata: [:], createdAt: now, lastActiveAt: now, templateId: templateId)
        var started: SandboxRuntime?
        var forkFailed = false
        do {
            let t0 = Clock.monotonicNs()
            if let z {
                let rt = try await launch(record, plan: plan, role: .nested(z))
                started = rt
                do { try await nestInterpreter(z, into: rt) } catch { forkFailed = true; throw error }
            } else {
                let rt = try await launch(record, plan: plan)
                started = rt
                _ = try await startContext(in: rt, language: "python", contextId: Self.defaultContextId)
            }
            let rt = started!
            let t1 = Clock.monotonicNs()
            if rt.disk != nil, rt.policy.checkpoints != .off {
                let base = try await rt.steps.run { [self] in try await snapshotFiles(rt, name: "warm start") }
                rt.warmBase.withLock { $0 = base }
            }
            logger.debug("warm template sandbox", metadata: ["sandbox": "\(rt.id)", "forked": "\(z != nil)",
                                                            "startMs": "\((t1 - t0) / 1_000_000)", "checkpointMs": "\((Clock.monotonicNs() - t1) / 1_000_000)"])
            return rt
        } catch {
            if let rt = started { await discard(rt) }
            if forkFailed, let z, z.usable {
                // A zygote that cannot fork into a sandbox (a template Python without ctypes, say)
                // is not asked again: this template's sandboxes start cold from now on.
                zygoteStarts.withLock { $0[z.key] = false }
                zygotes.withLock { if $0[z.key] === z { $0[z.key] = nil } }
                z.retired.store(true, ordering: .releasing)
                if z.children.load(ordering: .acquiring) == 0 { await discard(z.rt) }
                logger.warning("a template's zygote failed to start a sandbox; its sandboxes start cold", metadata: ["template": "\(name)", "error": "\(error)"])
            }
            throw error
        }
    }

    /// Keeps `config.warmTemplatePool` sandboxes of a PRELOAD template
    /// started, each with its default Python context ready: forked from the
    /// template's zygote (started here the first time), or started cold if
    /// it has none. Only the template's own code (the imports) has run in
    /// their interpreters when they are handed out. The first create of a
    /// template starts its pool; later creates take from it and refill it.
    func refillTemplatePool(_ templateId: String, name: String, policy: String) {
        let key = templateId + " " + policy
        guard config.warmTemplatePool > 0, !closing.load(ordering: .relaxed),
              templateRefills.withLock({ $0.insert(key).inserted }) else { return }
        Task.detached(priority: .utility) { [self] in
            defer { _ = templateRefills.withLock { $0.remove(key) } }
            try? await Task.sleep(for: .milliseconds(config.warmRefillDelayMs))
            while !closing.load(ordering: .relaxed), templatePools.withLock({ $0[key]?.count ?? 0 }) < config.warmTemplatePool,
                  liveCount + warmPool.withLock({ $0.count }) + templatePools.withLock({ $0.values.reduce(0) { $0 + $1.count } })
                    + zygotes.withLock({ $0.count }) < config.maxSandboxes {
                do {
                    let z = await zygote(templateId, name: name, policy: policy)
                    let rt = try await warmTemplateSandbox(templateId, name: name, policy: policy, zygote: z)
                    if closing.load(ordering: .relaxed) { await discard(rt); return }
                    templatePools.withLock { $0[key, default: []].append(rt) }
                } catch {
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
