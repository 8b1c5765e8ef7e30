/// A policy compiled for one host: every set-up step a sandbox goes through,
/// in order, with the values the engine will apply. The engine builds
/// sandboxes from this plan; `sandpit policy show` prints it.
public struct SandboxPlan: Sendable, Equatable {
    public struct Step: Sendable, Equatable {
        public var name: String
        public var detail: String
    }

    /// Facts about the host the plan depends on.
    public struct Host: Sendable, Equatable {
        public var cgroup: String            // "v1", "v2" or "none"
        public var uidBase: Int64
        public var uidCount: Int64
        public var seccompArch: String
        public var seccompRules: Int
        public var proxyPort: Int
        /// The daemon's hard RLIMIT_NOFILE: sandboxes cannot go above it (nil: no ceiling).
        public var openFilesCeiling: Int64?
        /// Rootless mode: ids are the daemon's own namespace's (its user's
        /// subordinate range), and disks are directories (no size limit).
        public var rootless = false
        public init(cgroup: String, uidBase: Int64, uidCount: Int64, seccompArch: String, seccompRules: Int, proxyPort: Int = 3128,
                    openFilesCeiling: Int64? = nil) {
            self.openFilesCeiling = openFilesCeiling
            self.cgroup = cgroup
            self.uidBase = uidBase
            self.uidCount = uidCount
            self.seccompArch = seccompArch
            self.seccompRules = seccompRules
            self.proxyPort = proxyPort
        }
    }

    public var policy: Policy
    public var steps: [Step]
    /// The sandbox's idle settings (the policy's, narrowed by the client's `idle`).
    public var idle: IdlePolicy = IdlePolicy()
    /// Whether the sandbox has a cgroup freezer to pause it with.
    public private(set) var canPause = true

    /// Sets `idle` to the policy's narrowed by a client's request; never a
    /// pause where there is nothing to freeze with (such a sandbox is
    /// hibernated when that is due), whatever the client asked.
    public mutating func narrowIdle(by request: JSONObject) throws(SandpitError) {
        idle = try policy.idle(narrowedBy: request)
        if !canPause { idle.pauseAfterMs = nil }
    }

    public var useCgroup: Bool { policy.cgroup }
    public var seccompEnabled: Bool { policy.seccomp }
    public var restrictSockets: Bool { policy.socketFamilies == .inet }
    public var proxyPort: Int?
    /// The writable layer lives in a size-limited tmpfs instead of the
    /// sandbox's own ext4 image (see `useScratchDisk`).
    public private(set) var scratchDisk = false

    /// For throwaway sandboxes (batch tasks): the writable layer goes in a
    /// tmpfs with the policy's disk size and inode limits, whose pages count
    /// against the sandbox's memory. No loop device, image copy or ext4 mount
    /// to make and undo; in exchange the sandbox cannot be checkpointed or
    /// hibernated, and its files are gone once it stops. A no-op when the
    /// policy gives no disk of its own.
    public mutating func useScratchDisk() {
        guard let d = policy.diskBytes else { return }
        scratchDisk = true
        policy.checkpoints = .off
        idle.hibernateAfterMs = nil
        policy.idle.hibernateAfterMs = nil
        func set(_ name: String, _ detail: String) {
            if let i = steps.firstIndex(where: { $0.name == name }) { steps[i].detail = detail }
        }
        set("disk", "scratch tmpfs for the writable layer, counted as memory: \(Self.bytes(d)), \(policy.diskInodes.map { "\($0) inodes" } ?? "default inodes"); gone when the sandbox stops")
        set("checkpoints", "off (scratch disk)")
        if let i = steps.firstIndex(where: { $0.name == "idle" }) { steps[i].detail += "; never hibernated (scratch disk)" }
    }

    public static func compile(_ policy: Policy, host: Host) -> SandboxPlan {
        var p = policy
        // ext4 needs at least 8 KiB of disk per inode (256-byte inodes plus data):
        // a client that shrinks the disk shrinks the inode count with it.
        if let bytes = p.diskBytes, let inodes = p.diskInodes, inodes > bytes / 8192 { p.diskInodes = bytes / 8192 }
        var s: [Step] = []
        func add(_ n: String, _ d: String) { s.append(Step(name: n, detail: d)) }
        add("namespaces", "user, pid, mount (from an empty anchor: no host mount), network, ipc, uts (clone); cgroup (agent unshares)")
        if host.rootless {
            add("user-map", "sandbox 0-\(host.uidCount - 1) -> the daemon's ids \(host.uidBase)-\(host.uidBase + host.uidCount - 1) (rootless: the user's subordinate ids); commands run as uid 1000; the user namespace owned by the daemon's user (per-user kernel limits shared with it)")
        } else {
            add("user-map", "sandbox 0-\(host.uidCount - 1) -> host \(host.uidBase)-\(host.uidBase + host.uidCount - 1); commands run as uid 1000; the user namespace owned by a host uid of its own (per-user kernel limits per sandbox)")
        }
        if p.diskBytes != nil, host.rootless {
            add("disk", "a directory of the store for the writable layer (rootless: no loop device, so no size or inode limit)")
        } else if let d = p.diskBytes {
            add("disk", "own ext4 image for the writable layer: \(Self.bytes(d)), \(p.diskInodes.map { "\($0) inodes" } ?? "default inodes")")
        } else {
            add("disk", "writable layer on the shared store (no per-sandbox size limit)")
        }
        add("root", "overlayfs (template layers + writable layer), nodev; /usr a read-only overlay of its own (no host inode, so no shared file lock); pivot_root")
        add("mounts", "fresh /proc (/proc/sys read-only, kernel files masked), /dev with its own device nodes, devpts, /dev/shm, tmpfs /tmp \(p.tmpBytes.map(Self.bytes) ?? "unlimited")")
        switch p.network {
        case .none: add("network", "loopback only")
        case .allowlist:
            add("network", "loopback only; egress through the daemon's proxy at 127.0.0.1:\(host.proxyPort) to: " + p.allow.joined(separator: ", "))
        case .host: add("network", "host network (template builds only)")
        }
        if p.cgroup && host.cgroup != "none" {
            var parts: [String] = []
            parts.append("memory " + (p.memoryBytes.map { Self.bytes($0) + ", swap off" } ?? "unlimited"))
            parts.append("pids " + (p.pids.map(String.init) ?? "unlimited"))
            parts.append("cpu " + (p.cpuMillicores.map { "\($0)m (\($0 * 100)us per 100000us)" } ?? "unlimited"))
            add("cgroup-\(host.cgroup)", parts.joined(separator: "; ") + "; delegated to the agent for one child group per exec")
        } else {
            add("cgroup", !p.cgroup ? "disabled by policy: no memory, pids or cpu limits"
                : host.rootless ? "unavailable: rootless without a delegated cgroup v2 subtree (run under systemd-run --user -p Delegate=yes), so no memory, pids or cpu limits"
                : "unavailable on this host: no memory, pids or cpu limits")
        }
        add("capabilities", "bounding and ambient sets emptied, SECBIT_NOROOT locked, no_new_privs, not dumpable")
        if p.seccomp {
            add("seccomp", "\(host.seccompArch) filter, \(host.seccompRules) rules (mount API, namespaces, keyrings, bpf, perf, userfaultfd, io_uring, modules, kexec, handles, reboot/swap/clock, TIOCSTI)"
                + (p.socketFamilies == .inet ? "; sockets: unix, inet, inet6 only" : "; sockets: any family"))
        } else {
            add("seccomp", "disabled by policy")
        }
        add("fds", "every host descriptor closed but the agent's control socket and cgroup dir (close-on-exec: commands get neither)")
        var capped = false
        if let c = host.openFilesCeiling, let o = p.openFiles, o > c {
            p.openFiles = c
            capped = true
        }
        add("rlimits", "open files " + (p.openFiles.map(String.init) ?? "inherited") + (capped ? " (capped at the daemon's own hard limit)" : "") + "; core dumps 0")
        add("environment", "clean: PATH, HOME, USER, LOGNAME, SHELL, LANG, PYTHONUNBUFFERED" + (p.network == .allowlist ? ", HTTP(S)_PROXY" : ""))
        add("exec", "wall time " + (p.execTimeoutMs.map { "\($0) ms" } ?? "unlimited") + ", then its whole process tree is killed; output kept " + (p.outputBytes.map { Self.bytes($0) + " (head + tail)" } ?? "unlimited")
            + ", sent at most " + (p.outputBytesPerSecond.map { Self.bytes($0) + "/s (past it the commands' pipes wait)" } ?? "as fast as it comes"))
        switch p.checkpoints {
        case .everyStep:
            add("checkpoints", "after every exec: " + (host.rootless ? "copy the disk's directory (file clones where the store can; hard links when nothing changed)" : "freeze the disk, clone its image by reference") + ", record the diff" + Self.quota(p))
        case .manual: add("checkpoints", "only on checkpoint.create" + Self.quota(p))
        case .off: add("checkpoints", "off")
        }
        // No cgroup, no freezer: an idle sandbox is never paused (it is hibernated when that is due).
        let canPause = p.cgroup && host.cgroup != "none"
        if !canPause { p.idle.pauseAfterMs = nil }
        func dur(_ ms: Int64?) -> String {
            ms.map { $0 > 0 && $0 % 86_400_000 == 0 ? "\($0 / 86_400_000) days" : $0 % 60_000 == 0 ? "\($0 / 60_000) min" : "\($0) ms" } ?? "never"
        }
        add("idle", "pause after \(dur(p.idle.pauseAfterMs)), hibernate after \(dur(p.idle.hibernateAfterMs)), delete after \(dur(p.idle.deleteAfterMs)); background processes \(p.idle.backgroundKeepsAwake ? "keep it awake" : "do not count")")
        add("sandbox", "wall time " + (p.sandboxTimeoutMs.map { "\($0) ms, then stopped (files kept)" } ?? "unlimited"))
        var plan = SandboxPlan(policy: p, steps: s)
        plan.idle = p.idle
        plan.canPause = canPause
        if p.network == .allowlist { plan.proxyPort = host.proxyPort }
        return plan
    }

    public var text: String {
        let w = steps.map(\.name.count).max() ?? 0
        return steps.enumerated().map { i, st in
            let n = String(i + 1)
            return String(repeating: " ", count: 2 - n.count) + n + ". " + st.name + String(repeating: " ", count: w - st.name.count) + "  " + st.detail
        }.joined(separator: "\n")
    }

    public var json: JSONValue {
        .object(["policy": policy.json, "steps": .array(steps.map { .object(["name": .string($0.name), "detail": .string($0.detail)]) })])
    }

    static func bytes(_ b: Int64) -> String {
        if b >= 1 << 30 && b % (1 << 30) == 0 { return "\(b >> 30) GiB" }
        if b >= 1 << 20 && b % (1 << 20) == 0 { return "\(b >> 20) MiB" }
        if b >= 1 << 10 && b % (1 << 10) == 0 { return "\(b >> 10) KiB" }
        return "\(b) B"
    }

    static func quota(_ p: Policy) -> String {
        guard let q = p.checkpointBytes else { return "; no store quota" }
        return "; at most \(bytes(q)) of changed files kept, then " + (p.checkpointQuota == .prune ? "the oldest unnamed ones are pruned" : "new ones are refused")
    }
}
