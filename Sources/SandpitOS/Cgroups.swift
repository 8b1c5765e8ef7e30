#if canImport(Glibc)
import Glibc
#endif
import SandpitCore

/// Which cgroup hierarchy the host runs. Detected once at start.
public enum CgroupVersion: String, Sendable { case v1, v2, none }

/// Limits applied to a sandbox's cgroup.
public struct CgroupLimits: Sendable, Equatable {
    public var memoryBytes: Int64?
    public var pids: Int?
    public var cpuMillicores: Int?
    public init(memoryBytes: Int64?, pids: Int?, cpuMillicores: Int?) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpuMillicores = cpuMillicores
    }
}

/// Creates and removes per-sandbox cgroups. Two implementations: v2 (one
/// unified tree) and v1 (one directory per controller hierarchy). `root` is the
/// cgroupfs mount point, injectable so tests can point it at a fake tree.
public protocol CgroupDriver: Sendable {
    var version: CgroupVersion { get }
    func create(_ name: String, limits: CgroupLimits) throws(OSError) -> CgroupHandle
    /// Finds a group left by an earlier daemon (for reconciliation).
    func existing() -> [String]
    func handle(_ name: String) -> CgroupHandle
    /// Removes the (empty) parent group at shutdown.
    func removeParent()
    /// The controllers sandboxes get (so the limits that are enforced).
    func controllers() -> [String]
}

/// One sandbox's cgroup: a directory per hierarchy (one on v2).
public struct CgroupHandle: Sendable {
    public var name: String
    public var dirs: [String]          // every hierarchy directory for this sandbox
    public var procsFiles: [String]    // files to write a pid into
    public var memoryDir: String?
    public var version: CgroupVersion

    /// Freezes every process in the group (no CPU, memory kept) and waits
    /// until the kernel reports it frozen: polled every 100 µs at first (a
    /// group of sleeping processes freezes in well under a millisecond), then
    /// every 2.5 ms, for at most `timeoutMs` (EBUSY then, the group left
    /// freezing: thaw it).
    public func freeze(timeoutMs: Int = 1000) throws(OSError) {
        guard let d = freezerDir else { throw OSError(call: "freeze", errno: ENOTSUP, path: nil) }
        let deadline = Clock.monotonicNs() + UInt64(timeoutMs) * 1_000_000
        var polls = 0
        func pause() -> Bool {
            polls += 1
            usleep(polls <= 20 ? 100 : 2_500)
            return Clock.monotonicNs() < deadline
        }
        if version == .v2 {
            try FS.writeFile(d + "/cgroup.freeze", "1")
            repeat {
                if (try? FS.readText(d + "/cgroup.events"))?.contains("frozen 1") == true { return }
            } while pause()
        } else {
            repeat {
                try FS.writeFile(d + "/freezer.state", "FROZEN")
                if (try? FS.readText(d + "/freezer.state"))?.hasPrefix("FROZEN") == true { return }
            } while pause()
        }
        throw OSError(call: "freeze", errno: EBUSY, path: d)
    }

    public func thaw() {
        guard let d = freezerDir else { return }
        if version == .v2 { try? FS.writeFile(d + "/cgroup.freeze", "0") } else { try? FS.writeFile(d + "/freezer.state", "THAWED") }
    }

    /// The directory delegated to the sandbox's agent, where it keeps one
    /// child group per running command: to find a command's whole tree, and
    /// for the kernel's count of OOM kills in it. v1: the memory hierarchy
    /// (the pids one when memory is not mounted); v2: the group, where the
    /// agent moves itself into a leaf and enables memory for the others.
    public var trackingDir: String?
    /// Where freezing happens (v1: the freezer hierarchy; v2: the group).
    public var freezerDir: String?

    /// Lets the sandbox's root (`uid` on the host) create child groups here
    /// and move processes into them (on v2 also enable controllers for
    /// them); the limit files stay the host's.
    public func delegate(to uid: UInt32) throws(OSError) {
        guard let d = trackingDir else { return }
        try FS.chown(d, uid: uid, gid: uid)
        try FS.chown(d + "/cgroup.procs", uid: uid, gid: uid)
        if version == .v2 { try FS.chown(d + "/cgroup.subtree_control", uid: uid, gid: uid) }
    }

    public func addProcess(_ pid: Int32) throws(OSError) {
        for f in procsFiles { try FS.writeFile(f, "\(pid)\n") }
    }

    /// Moves a process into one of the agent's per-exec groups (`ex_<id>`,
    /// which the agent made), as a process the agent spawned there would be:
    /// v2 has one hierarchy and the exec's group is in it; v1 needs the
    /// sandbox's group in every controller, then the exec's in the tracking one.
    public func addProcess(_ pid: Int32, toExecGroup name: String) throws(OSError) {
        if version != .v2 { try addProcess(pid) }
        if let t = trackingDir { try FS.writeFile(t + "/" + name + "/cgroup.procs", "\(pid)\n") }
    }

    /// Pids still in the group (any hierarchy).
    public func processes() -> [Int32] {
        var pids = Set<Int32>()
        for d in dirs + dirs.flatMap(Self.children) {
            guard let text = try? FS.readText(d + "/cgroup.procs") else { continue }
            for l in text.split(separator: "\n") { if let p = Int32(l) { pids.insert(p) } }
        }
        return pids.sorted()
    }

    /// Pids in the group but the agent's spare process: the next command's
    /// process, made ahead of time and waiting (named `sandpit-spare` until a
    /// command arrives and it execs), which is no work of the sandbox's. A
    /// process of the sandbox's that names itself so only hides from its own
    /// sandbox's idle count.
    public func processesButSpare() -> [Int32] {
        processes().filter { (try? FS.readText("/proc/\($0)/comm")) != "sandpit-spare\n" }
    }

    /// Child groups (the agent's per-exec groups), deepest first.
    static func children(of dir: String) -> [String] {
        FS.subdirectories(dir).flatMap { n in children(of: dir + "/" + n) + [dir + "/" + n] }
    }

    /// Memory charged to the group now (0 when unknown).
    public func memoryUsage() -> Int64 {
        guard let dir = memoryDir else { return 0 }
        let f = version == .v2 ? dir + "/memory.current" : dir + "/memory.usage_in_bytes"
        return (try? FS.readText(f)).flatMap { Int64($0.split(separator: "\n").first ?? "") } ?? 0
    }

    /// Whether the group's processes reached its pids limit: a fork failed
    /// there (`pids.events` `max`, counted where the fork was refused, which
    /// may be a per-exec child group already gone), or the peak reached the
    /// limit (`pids.peak`, kernels ≥ 6.12).
    public func pidsLimitReached() -> Bool {
        let dir = version == .v2 ? dirs.first : dirs.first { $0.contains("/pids/") }
        guard let dir else { return false }
        func number(_ file: String) -> Int? { (try? FS.readText(dir + "/" + file)).flatMap { Int($0.split(separator: "\n").first ?? "") } }
        if let max = number("pids.max"), let peak = number("pids.peak"), peak >= max { return true }
        for line in ((try? FS.readText(dir + "/pids.events")) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == "max", (Int(parts[1]) ?? 0) > 0 { return true }
        }
        return false
    }

    /// OOM kills the kernel counted in the sandbox's own memory group (on v1
    /// not those in the agent's per-command groups, which the agent reports).
    public func oomKills() -> Int {
        guard let dir = memoryDir else { return 0 }
        let file = version == .v2 ? dir + "/memory.events" : dir + "/memory.oom_control"
        guard let text = try? FS.readText(file) else { return 0 }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == "oom_kill" { return Int(parts[1]) ?? 0 }
        }
        return 0
    }

    /// SIGKILLs every process in the group until it is empty, then removes the
    /// directories, children (the agent's per-exec groups) first. A child
    /// group or process that appears meanwhile (a spare process finishing its
    /// attach as the agent dies, say) is found on the next pass.
    public func destroy() throws(OSError) {
        thaw()   // frozen processes do not die until thawed
        var last: OSError?
        for _ in 0..<5 {
            for _ in 0..<200 {
                let pids = processes()
                if pids.isEmpty { break }
                for p in pids { kill(p, SIGKILL) }
                usleep(5_000)
            }
            last = nil
            for d in dirs.flatMap({ Self.children(of: $0) + [$0] }) {
                var tries = 0
                while rmdir(d) != 0 {
                    let e = errno
                    if e == ENOENT { break }
                    tries += 1
                    if e != EBUSY || tries > 40 { last = OSError(call: "rmdir", errno: e, path: d); break }
                    usleep(5_000)
                }
                if last != nil { break }
            }
            if last == nil { return }
        }
        if let last { throw last }
    }
}

public enum Cgroups {
    /// Picks the driver for this host: v2 when the unified tree has the memory
    /// and pids controllers, else v1 when its hierarchies are mounted.
    ///
    /// With `writableOnly` (rootless mode) a hierarchy counts only where the
    /// daemon may make its groups: a v2 subtree delegated to the user (a
    /// systemd user service, or `systemd-run --user -p Delegate=yes`);
    /// v1 hierarchies belong to root.
    public static func detect(root: String = "/sys/fs/cgroup", prefix: String, writableOnly: Bool = false) -> any CgroupDriver {
        let selfCgroup = (try? FS.readText("/proc/self/cgroup")) ?? ""
        if let ctl = try? FS.readText(root + "/cgroup.controllers"),
           ctl.contains("memory"), ctl.contains("pids") {
            let d = CgroupV2Driver(root: root, prefix: prefix, selfCgroup: selfCgroup)
            if !writableOnly || canMake(d.base) { return d }
            return NoCgroupDriver()
        }
        if FS.isDirectory(root + "/memory") && FS.isDirectory(root + "/pids") {
            let d = CgroupV1Driver(root: root, prefix: prefix, selfCgroup: selfCgroup)
            if !writableOnly || d.bases.values.allSatisfy(canMake) { return d }
        }
        return NoCgroupDriver()
    }

    /// Whether `dir` exists and is writable, or could be made in the nearest
    /// directory above it that exists.
    static func canMake(_ dir: String) -> Bool {
        var d = dir
        while !d.isEmpty && !FS.exists(d) { d = String(d[..<(d.lastIndex(of: "/") ?? d.startIndex)]) }
        return access(d.isEmpty ? "/" : d, W_OK) == 0
    }

    /// Parses /proc/self/cgroup into [controller-list: path].
    static func parseSelf(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            out[String(parts[1])] = String(parts[2])
        }
        return out
    }
}

/// cgroup v1: the daemon nests its sandboxes under its own group in each
/// controller hierarchy, so an outer limit (a container, a systemd slice) still applies.
public struct CgroupV1Driver: CgroupDriver {
    public let version = CgroupVersion.v1
    let root: String
    let prefix: String
    let bases: [String: String]   // controller -> parent dir for sandbox groups

    static let controllers = ["memory", "pids", "cpu", "freezer"]

    public func controllers() -> [String] { Self.controllers.filter { bases[$0] != nil } }

    public init(root: String, prefix: String, selfCgroup: String) {
        self.root = root
        self.prefix = prefix
        let mine = Cgroups.parseSelf(selfCgroup)
        var bases: [String: String] = [:]
        for c in Self.controllers {
            let mountDir = root + "/" + c
            guard FS.isDirectory(mountDir) else { continue }
            let path = mine.first { $0.key.split(separator: ",").contains(Substring(c)) }?.value ?? "/"
            let own = path == "/" ? "" : path
            bases[c] = mountDir + own + "/" + prefix
        }
        self.bases = bases
    }

    public func create(_ name: String, limits: CgroupLimits) throws(OSError) -> CgroupHandle {
        var h = handle(name)
        for (c, base) in bases.sorted(by: { $0.key < $1.key }) {
            try FS.mkdirs(base)
            let dir = base + "/" + name
            try FS.mkdir(dir)
            switch c {
            case "memory":
                if let m = limits.memoryBytes {
                    try FS.writeFile(dir + "/memory.limit_in_bytes", "\(m)")
                    // No swap for sandboxes: memsw may be absent when swap accounting is off.
                    if FS.exists(dir + "/memory.memsw.limit_in_bytes") {
                        try? FS.writeFile(dir + "/memory.memsw.limit_in_bytes", "\(m)")
                    }
                    try? FS.writeFile(dir + "/memory.swappiness", "0")
                }
                h.memoryDir = dir
            case "pids":
                if let p = limits.pids { try FS.writeFile(dir + "/pids.max", "\(p)") }
            case "cpu":
                if let mc = limits.cpuMillicores {
                    try FS.writeFile(dir + "/cpu.cfs_period_us", "100000")
                    try FS.writeFile(dir + "/cpu.cfs_quota_us", "\(mc * 100)")
                }
            default: break
            }
        }
        return h
    }

    public func handle(_ name: String) -> CgroupHandle {
        let dirs = bases.sorted(by: { $0.key < $1.key }).map { $0.value + "/" + name }
        return CgroupHandle(name: name, dirs: dirs, procsFiles: dirs.map { $0 + "/cgroup.procs" },
                            memoryDir: bases["memory"].map { $0 + "/" + name }, version: .v1,
                            trackingDir: (bases["memory"] ?? bases["pids"]).map { $0 + "/" + name }, freezerDir: bases["freezer"].map { $0 + "/" + name })
    }

    public func removeParent() { for b in bases.values { rmdir(b) } }

    public func existing() -> [String] {
        var names = Set<String>()
        for base in bases.values { for n in FS.listDirectory(base) where FS.isDirectory(base + "/" + n) { names.insert(n) } }
        return names.sorted()
    }
}

/// cgroup v2: one directory; controllers must be enabled in the parent's subtree_control.
public struct CgroupV2Driver: CgroupDriver {
    public let version = CgroupVersion.v2
    let root: String
    let base: String

    public init(root: String, prefix: String, selfCgroup: String) {
        self.root = root
        let mine = Cgroups.parseSelf(selfCgroup)[""] ?? "/"
        // A process may not live in an inner node that delegates controllers,
        // so the sandboxes' parent is a sibling group of the daemon's own.
        let parent = mine == "/" ? "" : String(mine[..<(mine.lastIndex(of: "/") ?? mine.startIndex)])
        self.base = root + parent + "/" + prefix
    }

    public func create(_ name: String, limits: CgroupLimits) throws(OSError) -> CgroupHandle {
        try FS.mkdirs(base)
        // The controllers reach the sandbox's group only if they are enabled
        // in every group above it: the sandboxes' parent's parent (the root,
        // or the daemon's parent group) and the sandboxes' parent. One at a
        // time, so a controller this host lacks does not block the others.
        for dir in [String(base[..<(base.lastIndex(of: "/") ?? base.endIndex)]), base] {
            let enabled = ((try? FS.readText(dir + "/cgroup.subtree_control")) ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
            let missing = Self.controllers.filter { !enabled.contains($0) && !enabled.contains("+" + $0) }
            guard !missing.isEmpty else { continue }
            if (try? FS.writeFile(dir + "/cgroup.subtree_control", missing.map { "+" + $0 }.joined(separator: " "))) == nil {
                for c in missing { try? FS.writeFile(dir + "/cgroup.subtree_control", "+" + c) }
            }
        }
        let dir = base + "/" + name
        try FS.mkdir(dir)
        if let m = limits.memoryBytes {
            try FS.writeFile(dir + "/memory.max", "\(m)")
            try? FS.writeFile(dir + "/memory.swap.max", "0")
        }
        if let p = limits.pids { try FS.writeFile(dir + "/pids.max", "\(p)") }
        if let mc = limits.cpuMillicores { try FS.writeFile(dir + "/cpu.max", "\(mc * 100) 100000") }
        return handle(name)
    }

    public func handle(_ name: String) -> CgroupHandle {
        let dir = base + "/" + name
        return CgroupHandle(name: name, dirs: [dir], procsFiles: [dir + "/cgroup.procs"], memoryDir: dir, version: .v2, trackingDir: dir, freezerDir: dir)
    }

    /// The controllers sandboxes' limits need.
    static let controllers = ["memory", "pids", "cpu"]

    /// Those the sandboxes' parent passes down (or, before the first sandbox, those its parent has).
    public func controllers() -> [String] {
        let have = (try? FS.readText(base + "/cgroup.subtree_control"))
            ?? (try? FS.readText(String(base[..<(base.lastIndex(of: "/") ?? base.endIndex)]) + "/cgroup.controllers")) ?? ""
        let names = have.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        return Self.controllers.filter(names.contains) + ["freeze"]   // cgroup.freeze is in every v2 group
    }

    public func removeParent() { rmdir(base) }

    public func existing() -> [String] {
        FS.listDirectory(base).filter { FS.isDirectory(base + "/" + $0) }.sorted()
    }
}

/// No usable cgroups: sandboxes run without resource limits (reported in server.info).
public struct NoCgroupDriver: CgroupDriver {
    public let version = CgroupVersion.none
    public init() {}
    public func create(_ name: String, limits: CgroupLimits) throws(OSError) -> CgroupHandle { handle(name) }
    public func handle(_ name: String) -> CgroupHandle {
        CgroupHandle(name: name, dirs: [], procsFiles: [], memoryDir: nil, version: .none, trackingDir: nil, freezerDir: nil)
    }
    public func existing() -> [String] { [] }
    public func removeParent() {}
    public func controllers() -> [String] { [] }
}
