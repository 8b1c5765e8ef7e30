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
            if !rt.hasExited && SandboxSpawner.isAlive(pidfd: rt.spawned.pidfd), await answers(rt) { return rt }
            Task { await self.discard(rt) }
        }
        return nil
    }

    /// True when the agent replies to a stats request within a second.
    func answers(_ rt: SandboxRuntime) async -> Bool {
        await withTaskGroup(of: Bool.self) { g in
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

    /// Tears down a sandbox that was never handed out (no catalog record).
    func discard(_ rt: SandboxRuntime) async {
        await teardown(rt)
        try? FS.removeTree(storage.root + "/sandboxes/" + rt.id)
    }
}
