#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import SandpitCore
import SandpitOS

extension Engine {
    // MARK: steps and checkpoints

    func sandboxDir(_ id: String) -> String { storage.root + "/sandboxes/" + id }
    func checkpointDir(_ id: String) -> String { sandboxDir(id) + "/checkpoints" }
    func checkpointImage(_ sb: String, _ ck: String) -> String { checkpointDir(sb) + "/" + ck + ".img" }
    func checkpointManifest(_ sb: String, _ ck: String) -> String { checkpointDir(sb) + "/" + ck + ".manifest" }

    /// Advances the step counter after an exec and, under `every-step`,
    /// checkpoints the files. Never throws: a failed checkpoint is reported
    /// in the result and the step still counts.
    ///
    /// Returns once the checkpoint is durable: its files exist and its
    /// catalog row is committed, so a reply that names it holds across a
    /// crash of the daemon at any later instant (a kill -9 right after the
    /// reply finds it listed and restorable).
    ///
    /// `epoch` is `rt.restores` when the command started: a command an
    /// in-place restore killed records no step.
    func recordStep(_ rt: SandboxRuntime, epoch: Int? = nil) async -> ExecSession.StepRecord {
        do {
            return try await rt.steps.run { [self] in
                if let epoch, rt.restores.load(ordering: .acquiring) != epoch {
                    return ExecSession.StepRecord(step: rt.record.step, checkpoint: nil,
                                                  checkpointError: "the sandbox was restored while this ran, so it recorded no step")
                }
                let step = rt.state.withLock { s -> Int in
                    s.record.step += 1
                    s.record.lastActiveAt = Clock.nowMs()
                    return s.record.step
                }
                guard rt.policy.checkpoints == .everyStep, rt.disk != nil, !rt.state.withLock({ $0.deleting }) else {
                    return ExecSession.StepRecord(step: step, checkpoint: nil, checkpointError: nil)
                }
                do {
                    let t0 = Clock.monotonicNs()
                    let ck = try await applyCheckpointQuota(rt, new: snapshotFiles(rt, name: nil))
                    await checkpointLog.add(ck)
                    await checkpointLog.flush()
                    sealCheckpoint(rt.id, ck)
                    return ExecSession.StepRecord(step: step, checkpoint: ck, checkpointError: nil,
                                                  checkpointUs: Int64((Clock.monotonicNs() - t0) / 1000))
                } catch {
                    logger.warning("checkpoint failed", metadata: ["sandbox": "\(rt.id)", "error": "\(error)"])
                    return ExecSession.StepRecord(step: step, checkpoint: nil, checkpointError: "\(error)")
                }
            }
        } catch {
            return ExecSession.StepRecord(step: rt.record.step, checkpoint: nil, checkpointError: "\(error)")
        }
    }

    /// Waits until no step of the sandbox is being recorded and every
    /// queued checkpoint row is written, so the catalog lists every
    /// checkpoint a reply has named.
    func settleSteps(_ id: String, caller: Caller) async throws {
        if let rt = try runtime(id, caller: caller) { try await rt.steps.run {} }
        await checkpointLog.flush()
    }

    /// Takes a checkpoint of a live sandbox's files now (`checkpoint.create`).
    public func createCheckpoint(_ id: String, name: String?, caller: Caller) async throws -> CheckpointRecord {
        _ = try await wake(id, caller: caller)
        let rt = try await liveRuntime(id, caller: caller)
        guard rt.disk != nil else {
            throw SandpitError(.invalidState, rt.plan.scratchDisk
                ? "sandbox \(id) keeps its files in a scratch tmpfs (a batch task's sandbox), so it cannot be checkpointed"
                : "sandbox \(id) has no disk of its own (its policy sets diskBytes null), so it cannot be checkpointed")
        }
        return try await rt.steps.run { [self] in
            let ck = try await applyCheckpointQuota(rt, new: snapshotFiles(rt, name: name))
            await checkpointLog.add(ck)
            await checkpointLog.flush()
            sealCheckpoint(rt.id, ck)
            return ck
        }
    }

    /// Keeps a sandbox's checkpoints within its policy's `checkpointBytes`
    /// now that `ck` (the new head, its row not yet written) is taken: under
    /// `prune` the oldest checkpoints without a name go first (never the
    /// head); under `refuse`, or when pruning cannot make room, `ck` is
    /// undone (its files removed, the head back on its parent) and the call
    /// fails with `limit_exceeded`. The caller holds the step lock.
    func applyCheckpointQuota(_ rt: SandboxRuntime, new taken: CheckpointRecord) async throws -> CheckpointRecord {
        var ck = taken
        guard let quota = rt.policy.checkpointBytes else { return ck }
        var total: Int64
        if let known = rt.checkpointBytes.withLock({ $0 }) {
            total = known
        } else {
            await checkpointLog.flush()
            total = try await catalog.checkpoints(of: rt.id).reduce(0) { $0 + $1.bytes }
        }
        if total + ck.bytes > quota, rt.policy.checkpointQuota == .prune {
            await checkpointLog.flush()
            let all = try await catalog.checkpoints(of: rt.id)
            total = all.reduce(0) { $0 + $1.bytes }
            // Oldest first; a checkpoint's children take over its parent.
            var parentOf = Dictionary(all.map { ($0.id, $0.parentId) }, uniquingKeysWith: { a, _ in a })
            parentOf[ck.id] = ck.parentId
            var pruned: [String] = []
            for old in all where total + ck.bytes > quota && old.name == nil && old.id != ck.id {
                let parent = parentOf[old.id] ?? nil
                try await catalog.pruneCheckpoint(old.id, parent: parent)
                for (k, v) in parentOf where v == old.id { parentOf[k] = parent }
                SandboxDisk.remove(checkpointImage(rt.id, old.id))
                unlink(checkpointImage(rt.id, old.id) + ".sum")
                unlink(checkpointManifest(rt.id, old.id))
                total -= old.bytes
                pruned.append(old.id)
            }
            if !pruned.isEmpty {
                logger.info("checkpoints pruned to fit the store quota", metadata: ["sandbox": "\(rt.id)", "pruned": "\(pruned.count)"])
                await catalog.event("checkpoints-pruned", sandbox: rt.id, detail: pruned.joined(separator: " "))
            }
            // The new head's parent may be gone: it hangs on the nearest kept ancestor.
            if let p = ck.parentId, pruned.contains(p) { ck.parentId = parentOf[ck.id] ?? nil }
        }
        if total + ck.bytes <= quota {
            rt.checkpointBytes.withLock { $0 = total + ck.bytes }
            return ck
        }
        rt.checkpointBytes.withLock { $0 = total }
        SandboxDisk.remove(checkpointImage(rt.id, ck.id))
        unlink(checkpointManifest(rt.id, ck.id))
        let parent = ck.parentId
        rt.headManifest.withLock { $0 = parent.flatMap { loadManifest(rt.id, $0) } }
        rt.state.withLock { $0.record.head = parent }
        let why = rt.policy.checkpointQuota == .prune ? "even after pruning every checkpoint without a name" : "policy checkpointQuota is \"refuse\""
        throw SandpitError(.limitExceeded, "checkpoint not taken: the sandbox's checkpoints would hold \(total + ck.bytes) bytes of changed files, over its checkpointBytes quota of \(quota) (\(why)); delete or restore to free some, or raise limits.checkpointBytes",
                           details: ["limit": "checkpointBytes", "quotaBytes": .int(quota), "usedBytes": .int(total), "checkpointBytes": .int(ck.bytes)])
    }

    /// A whole checkpoint, catalog row included; the caller holds the step lock.
    func snapshot(_ rt: SandboxRuntime, name: String?) async throws -> CheckpointRecord {
        let ck = try await snapshotFiles(rt, name: name)
        await checkpointLog.add(ck)
        await checkpointLog.flush()
        sealCheckpoint(rt.id, ck)
        return ck
    }

    /// One queue for checksums, at background priority: they are read back
    /// only when a restore or fork uses the checkpoint.
    static let checksumQueue = DispatchQueue(label: "sandpit.checksums", qos: .background)

    /// Records the checksum of a new checkpoint's image, after the reply:
    /// an image shared with its parent (a step that changed nothing) shares
    /// the parent's sum; others are read once on the checksum queue.
    /// `verifyCheckpoint` waits for a pending one.
    func sealCheckpoint(_ sb: String, _ ck: CheckpointRecord) {
        let image = checkpointImage(sb, ck.id)
        // A directory disk's copy (rootless) has no image to sum.
        if FS.isDirectory(image) { return }
        if let p = ck.parentId, FS.sameFile(image, checkpointImage(sb, p)), link(checkpointImage(sb, p) + ".sum", image + ".sum") == 0 { return }
        let id = ck.id
        let task = Task.detached(priority: .background) { [weak self] in
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                Self.checksumQueue.async {
                    // A checkpoint deleted (or pruned) meanwhile has no image: nothing to seal;
                    // one a restore or fork sealed first needs nothing more.
                    if !FS.exists(image + ".sum"), let sum = try? ImageChecksum.compute(image) { try? sum.write(for: image) }
                    c.resume()
                }
            }
            self?.checksums.withLock { _ = $0.removeValue(forKey: id) }
        }
        checksums.withLock { $0[id] = task }
    }

    /// Refuses a checkpoint whose image no longer matches its checksum,
    /// before a restore or fork uses it (nothing is touched yet). The image
    /// is read again only when it is not as it was sealed (inode, size,
    /// modification time): any write into it shows there. An image without a
    /// sum (made by an earlier version, or still queued) is used as it is.
    func verifyCheckpoint(_ sb: String, _ ck: CheckpointRecord) async throws {
        let image = checkpointImage(sb, ck.id)
        guard let want = ImageChecksum.stored(for: image) else { return }
        if ImageChecksum.Stamp.of(image) == want.stamp { return }
        let got = try await EngineThread.run { try ImageChecksum.compute(image) }
        guard !got.sameData(want) else { return }
        logger.error("a checkpoint's image is damaged", metadata: ["sandbox": "\(sb)", "checkpoint": "\(ck.id)", "want": "\(want.text)", "got": "\(got.text)"])
        await catalog.event("checkpoint-corrupt", sandbox: sb, detail: ck.id)
        throw SandpitError(.checkpointCorrupt, "checkpoint \(ck.id) (step \(ck.step)) of sandbox \(sb) is damaged: its image no longer matches the checksum taken when it was made (crc32c \(String(want.crc, radix: 16)), now \(String(got.crc, radix: 16))), so it is not used; the sandbox is as it was. Restore another step or checkpoint",
                           details: ["checkpointId": .string(ck.id), "step": .int(Int64(ck.step))])
    }

    /// The checkpoint itself; the caller holds the sandbox's step lock.
    /// Files first (image and manifest under temporary names, then renamed),
    /// the catalog last: a crash in between leaves files the next start
    /// removes, never a listed checkpoint without its files. The sandbox's
    /// head has moved to it on return; the caller queues the row on
    /// `checkpointLog` once the files exist (they do on return).
    func snapshotFiles(_ rt: SandboxRuntime, name: String?) async throws -> CheckpointRecord {
        guard let disk = rt.disk else { throw SandpitError(.invalidState, "no disk of its own") }
        let id = Identifier.make("ck")
        let sb = rt.id
        let dir = checkpointDir(sb)
        let image = sandboxDir(sb) + "/disk.img", copy = checkpointImage(sb, id)
        let parent = rt.record.head
        let known = rt.headManifest.withLock { $0 } ?? parent.flatMap { loadManifest(sb, $0) }
        let previous = known ?? Manifest()
        let store = storage
        let t0 = Clock.monotonicNs()
        // A step that changed no file (every inode's size, mode and
        // nanosecond ctime as in the head's manifest) shares the head's
        // image and manifest: two hard links instead of a freeze, a sync and
        // a clone. Both are immutable (restores and forks clone them). A small
        // upper is scanned right here; a large one on a thread of its own.
        @Sendable func unchanged() -> Manifest? {
            guard parent != nil, let base = known, FS.isDirectory(dir),
                  let now = try? ManifestScan.scan(SandboxDisk.path(in: disk, SandboxDisk.upper)), now == base else { return nil }
            return now
        }
        @Sendable func linkToHead() -> Bool {
            guard let head = parent, SandboxDisk.share(checkpointImage(sb, head), as: copy) else { return false }
            guard link(checkpointManifest(sb, head), checkpointManifest(sb, id)) == 0 else { SandboxDisk.remove(copy); return false }
            return true
        }
        @Sendable func full() throws -> Manifest {
            // A failed checkpoint leaves nothing behind (a half copy on a full store would keep it full).
            do {
                if !FS.isDirectory(dir) { try FS.mkdir(dir, mode: 0o700) }
                let m = try SandboxDisk.snapshot(mount: disk, image: image, to: copy + ".tmp", storage: store, quiesce: { Self.holdWriters(rt) }) {
                    Fault.point("checkpoint.frozen")
                    return try ManifestScan.scan(SandboxDisk.path(in: disk, SandboxDisk.upper))
                }
                Fault.point("checkpoint.cloned")
                try FS.writeBytes(copy + ".manifest.tmp", m.encoded())
                _ = try sys("rename", path: copy) { rename(copy + ".manifest.tmp", self.checkpointManifest(sb, id)) }
                _ = try sys("rename", path: copy) { rename(copy + ".tmp", copy) }
                return m
            } catch {
                for f in [copy + ".tmp", copy + ".manifest.tmp", copy, self.checkpointManifest(sb, id)] { SandboxDisk.remove(f) }
                throw Self.storeError(error)
            }
        }
        let small = (known?.entries.count ?? .max) <= 256
        let manifest: Manifest
        if small, let m = unchanged() {
            manifest = m
            // Linking can fail (the link count limit, say): then a real snapshot of the same files.
            if !linkToHead() { _ = try await EngineThread.run { try full() } }
        } else {
            manifest = try await EngineThread.run { () throws -> Manifest in
                if !small, let m = unchanged(), linkToHead() { return m }
                return try full()
            }
        }
        let lower = rt.image.lower
        let diff = CheckpointDiff.compute(old: previous, new: manifest) { p in lower.contains { FS.lexists($0 + "/" + p) } }
        let record = CheckpointRecord(id: id, sandboxId: sb, step: rt.record.step, name: name, parentId: parent,
                                      createdAt: Clock.nowMs(), diff: diff, bytes: diff.bytes)
        Fault.point("checkpoint.files-written")
        noteInterpreters(rt, checkpoint: id)
        rt.headManifest.withLock { $0 = manifest }
        rt.state.withLock { $0.record.head = id }
        logger.debug("checkpoint", metadata: ["sandbox": "\(sb)", "checkpoint": "\(id)", "us": "\((Clock.monotonicNs() - t0) / 1000)"])
        return record
    }

    /// Holds every writer of a running sandbox's disk without freezing the
    /// filesystem (see `SandboxDisk.snapshot`): the daemon's file calls (none
    /// may be writing now) and the sandbox's processes (its cgroup frozen,
    /// which stops each outside any filesystem call). nil when it cannot:
    /// no freezer, already paused, a writer busy, or a process that does not
    /// freeze within 50 ms (stuck in the kernel): then the filesystem is frozen.
    static func holdWriters(_ rt: SandboxRuntime) -> (() -> Void)? {
        guard rt.cgroup.freezerDir != nil, rt.idle.withLock({ $0.phase }) == .running, rt.diskWriters.close() else { return nil }
        do {
            try rt.cgroup.freeze(timeoutMs: 50)
        } catch {
            rt.cgroup.thaw()
            rt.diskWriters.open()
            return nil
        }
        return {
            rt.cgroup.thaw()
            rt.diskWriters.open()
        }
    }

    /// A store that ran out of space is the caller's limit, not an internal
    /// failure: `limit_exceeded`, saying so. Other errors pass through.
    static func storeError(_ error: Error) -> Error {
        guard let e = error as? OSError, [ENOSPC, EDQUOT].contains(e.errno) else { return error }
        return SandpitError(.limitExceeded, "the checkpoint did not fit: the store is full (\(e)); the sandbox runs on as it was. Delete sandboxes or checkpoints, or give the store more room (--storage-gib)",
                            details: ["limit": "store"])
    }

    func loadManifest(_ sb: String, _ ck: String) -> Manifest? {
        (try? FS.readFile(checkpointManifest(sb, ck), limit: 1 << 30)).flatMap(Manifest.decode)
    }

    /// The sandbox's checkpoint store quota (`checkpointBytes` of the policy it runs under; nil: none).
    public func checkpointQuota(_ id: String, caller: Caller) async throws -> Int64? {
        let r = try await sandbox(id, caller: caller)
        if let rt = try runtime(id, caller: caller) { return rt.policy.checkpointBytes }
        if let plan = dormantPlans.withLock({ $0[id] }) { return plan.policy.checkpointBytes }
        return try? policies.policy(r.policy).checkpointBytes
    }

    public func checkpoints(_ id: String, caller: Caller) async throws -> [CheckpointRecord] {
        _ = try await sandbox(id, caller: caller)
        try await settleSteps(id, caller: caller)
        return try await catalog.checkpoints(of: id)
    }

    /// The checkpoint a restore or fork names: by id, or by step on the
    /// sandbox's current branch (the head and its ancestors); the newest
    /// checkpoint with that step when no ancestor has it.
    func resolveCheckpoint(_ r: SandboxRecord, step: Int?, checkpointId: String?) async throws -> CheckpointRecord {
        let all = try await catalog.checkpoints(of: r.id)
        if let cid = checkpointId {
            guard let c = all.first(where: { $0.id == cid }) else { throw SandpitError.notFound("Checkpoint", cid) }
            return c
        }
        guard let step else {
            guard let head = r.head, let c = all.first(where: { $0.id == head }) ?? all.last else {
                throw SandpitError(.notFound, "sandbox \(r.id) has no checkpoints yet")
            }
            return c
        }
        let byId = Dictionary(all.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var cursor = r.head.flatMap { byId[$0] }
        while let c = cursor {
            if c.step == step { return c }
            cursor = c.parentId.flatMap { byId[$0] }
        }
        guard let c = all.last(where: { $0.step == step }) else {
            throw SandpitError(.notFound, "sandbox \(r.id) has no checkpoint at step \(step) (steps: \(Set(all.map(\.step)).sorted().map(String.init).joined(separator: ", ")))",
                               details: ["step": .int(Int64(step))])
        }
        return c
    }

    public struct Restored: Sendable {
        public var sandbox: SandboxRecord
        public var checkpoint: CheckpointRecord
        public var restored: [String]
        public var lost: [String]
        /// What an in-place restore did to each interpreter context: "restored"
        /// (its variables as of the checkpoint, `executionCount` as then) or "lost"
        /// (the next cell starts it fresh). Empty for a restore that relaunched the sandbox.
        public var contexts: [(id: String, outcome: String, executionCount: Int?)] = []
    }

    /// Puts the sandbox's files back to a checkpoint. Its processes are
    /// stopped (a fresh agent runs on the restored files); a stopped sandbox
    /// comes back running. The next step is the checkpoint's step + 1, on a
    /// new branch; later checkpoints stay listed.
    public func restore(_ id: String, step: Int?, checkpointId: String?, caller: Caller) async throws -> Restored {
        try await settleSteps(id, caller: caller)
        var record = try await sandbox(id, caller: caller)
        let ck = try await resolveCheckpoint(record, step: step, checkpointId: checkpointId)
        try await verifyCheckpoint(id, ck)
        if let rt = try runtime(id, caller: caller), let done = try await restoreInPlace(rt, to: ck, caller: caller) {
            return done
        }
        var lost: [String] = []
        let old = try runtime(id, caller: caller)
        let plan: SandboxPlan
        if let rt = old {
            plan = rt.plan
            // Hold the step lock so no checkpoint of the old files lands after the restore.
            let stopped = try await rt.steps.run { [self] in await teardown(rt) }
            if stopped { lost.append("processes") }
            if hadInterpreters(id) { lost.append("interpreter") }
            record = rt.record
        } else {
            plan = try dormantPlans.withLock({ $0[id] }) ?? self.plan(policy: record.policy)
            if record.state != .hibernated { lost.append("processes") }
            if hadInterpreters(id) { lost.append("interpreter") }
        }
        let memory = plan.policy.memoryBytes ?? 0
        try await admitSandbox(memory: memory, AdmissionTicket(client: caller.uid))
        var admitted = true
        defer { if admitted { admission.release(.sandbox(memory: memory)) } }
        let image = sandboxDir(id) + "/disk.img"
        SandboxDisk.remove(image + ".restore")
        try SandboxDisk.copy(checkpointImage(id, ck.id), to: image + ".restore", storage: storage)
        Fault.point("restore.cloned")
        try SandboxDisk.replace(image, with: image + ".restore")
        record.state = .starting
        record.step = ck.step
        record.head = ck.id
        record.stateReason = nil
        let rt = try await launch(record, plan: plan, fresh: false)
        record.state = .running
        record.lastActiveAt = Clock.nowMs()
        rt.state.withLock { $0.record = record }
        rt.headManifest.withLock { $0 = loadManifest(id, ck.id) }
        dormant.withLock { _ = $0.removeValue(forKey: id) }
        dormantPlans.withLock { _ = $0.removeValue(forKey: id) }
        rt.admittedMemory.withLock { $0 = memory }
        admitted = false
        registry.withLock { $0[id] = rt }
        try await catalog.updateSandbox(record)
        await catalog.event("restored", sandbox: id, detail: "checkpoint=\(ck.id) step=\(ck.step)")
        emit(id, .running, reason: "restored to step \(ck.step)", owner: record.owner)
        return Restored(sandbox: record, checkpoint: ck, restored: ["filesystem"], lost: lost,
                        contexts: contextLanguages(id).keys.sorted().map { ($0, "lost", nil) })
    }

    /// Records which frozen interpreter copy holds each Python context's
    /// state as of a new checkpoint: the copy of its last finished cell.
    func noteInterpreters(_ rt: SandboxRuntime, checkpoint: String) {
        var at: [String: Int] = [:]
        for (cid, c) in rt.contexts.withLock({ $0 }) where c.keepCopies > 0 {
            if let serial = c.state.withLock({ $0.dead == nil ? $0.current : nil }) { at[cid] = serial }
        }
        guard !at.isEmpty else { return }
        rt.interpreterAt.withLock { m in
            m[checkpoint] = at
            // Forget checkpoints whose copies are all gone (evicted, or their context ended).
            if m.count > 1024 {
                var live = Set<Int>()
                for c in rt.contexts.withLock({ Array($0.values) }) { live.formUnion(c.state.withLock { $0.copies.map(\.serial) }) }
                m = m.filter { !$0.value.values.allSatisfy { !live.contains($0) } }
            }
        }
    }

    /// Restores a live sandbox to a checkpoint without relaunching it, when
    /// at least one of its Python contexts has a frozen copy of its
    /// interpreter as of that checkpoint (`interpreterSnapshots`); nil (and
    /// nothing touched) otherwise, and the caller relaunches as before.
    ///
    /// Running cells are stopped, and each context's cell lock is taken, then
    /// the step lock. The checkpoint's image is cloned and mounted as a new
    /// overlay. The agent kills every process but itself and the frozen
    /// copies, making each context's copy its exec's main process. A daemon
    /// thread in the sandbox's mount namespace puts the new overlay in place
    /// of the root (`RootSwap`). Then each copy is woken: it is the
    /// context's interpreter, with the variables it had after that step.
    func restoreInPlace(_ rt: SandboxRuntime, to ck: CheckpointRecord, caller: Caller) async throws -> Restored? {
        let mapping = rt.interpreterAt.withLock { $0[ck.id] } ?? [:]
        guard !mapping.isEmpty, rt.disk != nil, !rt.hasExited, !rt.state.withLock({ $0.deleting }) else { return nil }
        let contexts = rt.contexts.withLock { Array($0.values) }.filter { !$0.isDead }.sorted { $0.id < $1.id }
        guard contexts.contains(where: { mapping[$0.id] != nil }) else { return nil }
        _ = try await wake(rt.id, caller: caller)   // a paused sandbox's agent cannot answer
        guard registry.withLock({ $0[rt.id] }) === rt else { return nil }
        let why = "the sandbox was restored to step \(ck.step)"
        @Sendable func holdingCells(_ rest: ArraySlice<InterpreterContext>, _ body: @escaping @Sendable () async throws -> Restored?) async throws -> Restored? {
            guard let first = rest.first else { return try await body() }
            first.cancelCell(why)
            return try await first.cells.run { try await holdingCells(rest.dropFirst(), body) }
        }
        return try await holdingCells(contexts[...]) { [self] in
            try await rt.steps.run { [self] in try await restoreInPlaceLocked(rt, ck, contexts: contexts, mapping: mapping, why: why) }
        }
    }

    private func restoreInPlaceLocked(_ rt: SandboxRuntime, _ ck: CheckpointRecord, contexts: [InterpreterContext],
                                      mapping: [String: Int], why: String) async throws -> Restored? {
        var targets: [(ctx: InterpreterContext, copy: InterpreterContext.Copy)] = []
        for c in contexts {
            if let serial = mapping[c.id], let copy = await c.copy(serial: serial) { targets.append((c, copy)) }
        }
        guard !targets.isEmpty, !rt.hasExited else { return nil }
        let id = rt.id
        let t0 = Clock.monotonicNs()
        // The restored files, ready before anything is stopped.
        let image = sandboxDir(id) + "/disk.img", staged = image + ".restore"
        SandboxDisk.remove(staged)
        try SandboxDisk.copy(checkpointImage(id, ck.id), to: staged, storage: storage)
        let disk: FileDescriptor, root: FileDescriptor
        do {
            disk = try SandboxDisk.mount(staged)
            do {
                root = try DetachedMount.overlay(lower: rt.image.lower, upper: SandboxDisk.path(in: disk, SandboxDisk.upper),
                                                 work: SandboxDisk.path(in: disk, SandboxDisk.work))
            } catch { disk.close(); throw error }
        } catch {
            SandboxDisk.remove(staged)
            throw error
        }
        defer { root.close() }
        Fault.point("restore.cloned")
        // The staged image becomes the sandbox's disk (the old one stays attached until its mount goes);
        // from here on the sandbox changes, and a failure below relaunches it on this image.
        do { try SandboxDisk.replace(image, with: staged) } catch {
            disk.close()
            SandboxDisk.remove(staged)
            throw error
        }
        let restoring = Set(targets.map(\.ctx.id))
        for c in contexts where !restoring.contains(c.id) {
            c.die("\(why), which has no frozen copy of this interpreter")
        }
        let kept = Set(targets.map(\.ctx.session.numericId))
        for x in rt.state.withLock({ Array($0.execs.values) }) where !x.isFinished && !kept.contains(x.numericId) {
            x.markKilled(by: "sandbox restored")
        }
        rt.restores.add(1, ordering: .acquiringAndReleasing)
        let keep = targets.flatMap { $0.ctx.copyPids }
        let stopped = await rt.killAllBut(keep: keep, adopt: targets.map { ($0.ctx.session.numericId, $0.copy.pid ?? 0) })
        var swapped = false
        if let stopped, stopped.alive == 0 {
            let rootUid = config.ids.hostID(0)
            do {
                try Fault.failure("restore.swap")
                try await RootSwap.swap(agentPid: rt.spawned.pid, newRoot: root, moveUsr: rt.image.hostUsr,
                                        tmpOptions: "mode=1777,size=\(rt.policy.tmpBytes ?? 0),uid=\(rootUid),gid=\(rootUid)")
                swapped = true
            } catch {
                logger.error("in-place restore failed; relaunching", metadata: ["sandbox": "\(id)", "error": "\(error)"])
            }
        } else {
            logger.error("in-place restore could not stop the sandbox's processes; relaunching",
                         metadata: ["sandbox": "\(id)", "alive": "\(stopped.map { "\($0.alive)" } ?? "agent gone")"])
        }
        guard swapped else {
            disk.close()
            dormantPlans.withLock { $0[id] = rt.plan }   // the relaunch keeps the sandbox's narrowed limits
            _ = await teardown(rt)
            return nil
        }
        rt.replaceDisk(disk)?.close()
        for w in rt.fileWatches.withLock({ w in defer { w = [:] }; return Array(w.values) }) { w.stop() }
        let now = Clock.nowMs()
        let record = rt.state.withLock { s -> SandboxRecord in
            s.record.state = .running
            s.record.step = ck.step
            s.record.head = ck.id
            s.record.stateReason = nil
            s.record.lastActiveAt = now
            return s.record
        }
        rt.headManifest.withLock { $0 = loadManifest(id, ck.id) }
        try await catalog.updateSandbox(record)
        // Each frozen copy wakes as its context's interpreter.
        var outcomes: [(id: String, outcome: String, executionCount: Int?)] = []
        for c in contexts where !restoring.contains(c.id) { outcomes.append((c.id, "lost", nil)) }
        for (c, copy) in targets {
            do {
                try await c.wake(copy, rt: rt)
                outcomes.append((c.id, "restored", copy.n))
            } catch {
                c.die("\(why), but its frozen interpreter did not wake: \(error)")
                rt.signal(exec: c.session.numericId, SIGKILL)
                outcomes.append((c.id, "lost", nil))
            }
        }
        outcomes.sort { $0.id < $1.id }
        let back = outcomes.contains { $0.outcome == "restored" }, gone = outcomes.contains { $0.outcome == "lost" }
        await catalog.event("restored", sandbox: id, detail: "checkpoint=\(ck.id) step=\(ck.step) in-place interpreters=\(outcomes.filter { $0.outcome == "restored" }.count)")
        emit(id, .running, reason: "restored to step \(ck.step)", owner: record.owner)
        logger.debug("in-place restore", metadata: ["sandbox": "\(id)", "ms": "\(Double(Clock.monotonicNs() - t0) / 1e6)"])
        return Restored(sandbox: record, checkpoint: ck, restored: ["filesystem"] + (back ? ["interpreter"] : []),
                        lost: ["processes"] + (gone ? ["interpreter"] : []), contexts: outcomes)
    }

    /// `count` new sandboxes whose files are the checkpoint's. Nothing is
    /// copied: each gets reflink clones (its disk and its own base checkpoint).
    /// Interpreter contexts are not carried: a fork's first `code.run` in
    /// one of the source's contexts starts it fresh and says `restarted`,
    /// and `lost` says `interpreter`.
    /// `idle` narrows the forks' idle rules (as at create); `metadata` is added to the source's.
    public func fork(_ id: String, step: Int?, checkpointId: String?, count: Int, idle: JSONObject = [:],
                     metadata: [String: String] = [:], caller: Caller) async throws -> (sandboxes: [SandboxRecord], lost: [String]) {
        try await settleSteps(id, caller: caller)
        let source = try await sandbox(id, caller: caller)
        let ck = try await resolveCheckpoint(source, step: step, checkpointId: checkpointId)
        try await verifyCheckpoint(id, ck)
        var plan = try (try runtime(id, caller: caller))?.plan ?? self.plan(policy: source.policy)
        try plan.narrowIdle(by: idle)
        let memory = plan.policy.memoryBytes ?? 0
        let languages = contextLanguages(id)
        var out: [SandboxRecord] = []
        for _ in 0..<count {
            try await admitSandbox(memory: memory, AdmissionTicket(client: caller.uid))
            var admitted = true
            defer { if admitted { admission.release(.sandbox(memory: memory)) } }
            let now = Clock.nowMs()
            let newId = Identifier.make("sb"), base = Identifier.make("ck")
            var meta = source.metadata.merging(metadata) { _, given in given }
            meta["forkedFrom"] = source.id
            var record = SandboxRecord(id: newId, state: .starting, template: source.template, policy: source.policy, metadata: meta,
                                       createdAt: now, lastActiveAt: now, step: ck.step, owner: caller.uid, head: base,
                                       templateId: source.templateId)
            try await catalog.insertSandbox(record)
            do {
                try FS.mkdirs(checkpointDir(newId), mode: 0o700)
                // Checkpoints are never written: a directory disk's (rootless) shares its files.
                if !(SandboxDisk.directories && SandboxDisk.share(checkpointImage(id, ck.id), as: checkpointImage(newId, base))) {
                    try SandboxDisk.copy(checkpointImage(id, ck.id), to: checkpointImage(newId, base), storage: storage)
                }
                try storage.copyFile(checkpointManifest(id, ck.id), to: checkpointManifest(newId, base))
                // The same bytes: the same sum (with the copy's own stamp).
                if var sum = ImageChecksum.stored(for: checkpointImage(id, ck.id)), let stamp = ImageChecksum.Stamp.of(checkpointImage(newId, base)) {
                    sum.stamp = stamp
                    try? sum.write(for: checkpointImage(newId, base))
                }
                try SandboxDisk.copy(checkpointImage(id, ck.id), to: sandboxDir(newId) + "/disk.img", storage: storage)
                try await catalog.insertCheckpoints([CheckpointRecord(
                    id: base, sandboxId: newId, step: ck.step, name: "fork of \(ck.id)", parentId: nil, createdAt: now,
                    diff: CheckpointDiff(), bytes: 0)])
                let rt = try await launch(record, plan: plan)
                record.state = .running
                record.lastActiveAt = Clock.nowMs()
                rt.state.withLock { $0.record = record }
                rt.headManifest.withLock { $0 = loadManifest(newId, base) }
                rt.admittedMemory.withLock { $0 = memory }
                admitted = false
                registry.withLock { $0[newId] = rt }
                try await catalog.updateSandbox(record)
                await catalog.event("forked", sandbox: newId, detail: "from=\(id) checkpoint=\(ck.id)")
                if !languages.isEmpty { lostContexts.withLock { $0[newId] = languages } }
                out.append(record)
            } catch {
                try? FS.removeTree(sandboxDir(newId))
                try? await catalog.deleteCheckpoints(of: newId)
                try? await catalog.deleteSandbox(newId, at: Clock.nowMs())
                throw error
            }
        }
        return (out, languages.isEmpty ? [] : ["interpreter"])
    }

    /// The sandbox's interpreter contexts (id → language): live ones, or
    /// ones its processes lost (hibernation, restore) that restart on next use.
    func contextLanguages(_ id: String) -> [String: String] {
        var out = lostContexts.withLock { $0[id] ?? [:] }
        if let rt = registry.withLock({ $0[id] }) {
            for (cid, c) in rt.contexts.withLock({ $0 }) where !c.isDead { out[cid] = c.language }
        }
        return out
    }

    func hadInterpreters(_ id: String) -> Bool { !contextLanguages(id).isEmpty }

    /// What the store holds: its size and use, and per-sandbox apparent sizes.
    /// What one tenant's sandboxes hold on the store (their disks and
    /// checkpoints, by allocated blocks): not the store's totals or paths.
    public func storageReport(owner: Int64) async -> JSONValue {
        let mine = ((try? await catalog.listSandboxes(state: nil, after: nil, limit: 100_000)) ?? [])
            .filter { $0.owner == owner && $0.state != .deleted }
        var bytes: Int64 = 0
        for s in mine { bytes += FS.allocatedBytes(storage.root + "/sandboxes/" + s.id) }
        return .object(["mode": .string(storage.mode.rawValue), "reflink": .bool(storage.reflink),
                        "sandboxDirs": .int(Int64(mine.count)), "usedBytes": .int(bytes)])
    }

    public func storageReport() -> JSONValue {
        var st = statvfs()
        _ = statvfs(storage.root, &st)
        let total = Int64(st.f_blocks) * Int64(st.f_frsize), free = Int64(st.f_bavail) * Int64(st.f_frsize)
        let sandboxes = FS.listDirectory(storage.root + "/sandboxes").count
        let layers = FS.listDirectory(storage.root + "/layers").filter { !$0.hasSuffix(".partial") }
        let layerBytes = (try? catalog.sync { c in try c.layerBytes() }) ?? 0
        return .object([
            "root": .string(storage.root), "mode": .string(storage.mode.rawValue), "reflink": .bool(storage.reflink),
            "totalBytes": .int(total), "usedBytes": .int(total - free), "freeBytes": .int(free),
            "sandboxDirs": .int(Int64(sandboxes)), "layers": .int(Int64(layers.count)), "layerBytes": .int(layerBytes),
        ])
    }
}
