#if canImport(Glibc)
import Glibc
#endif
import CSandpit

/// Rootless mode: `sandpit` started by an unprivileged user.
///
/// Such a user cannot write an id range into a sandbox's `uid_map`, attach
/// loop devices or mount on the host, but it can own a user namespace mapped
/// onto its subordinate id range (`/etc/subuid`, `/etc/subgid`, written by the
/// setuid `newuidmap`/`newgidmap`) and be root in it. `enter` runs the same
/// command again as that namespace's root (see `sp_rootless.c`): the user as
/// root, its subordinate ids as 1, 2, …; sandboxes nest their own user
/// namespaces in it, mapped onto those ids. What the kernel allows there, and
/// so what a rootless daemon can do, is in SECURITY.md ("Rootless mode").
public enum Rootless {
    /// Set in the re-executed process, naming the host user it runs for.
    public static let marker = "SANDPIT_ROOTLESS_UID"

    /// Whether this process is a rootless `sandpit`: root in a user namespace
    /// whose root is an unprivileged host user.
    public static let active: Bool = {
        guard let text = try? FS.readText("/proc/self/uid_map") else { return false }
        return parseMap(text).first { $0.inside == 0 }.map { $0.outside != 0 } ?? false
    }()

    /// The ids sandboxes map onto in rootless mode: this namespace's ids from
    /// 1 up (its subordinate range), at most 65,536 of them. Nil when not
    /// rootless or when fewer than 1,001 ids are mapped (sandbox commands run
    /// as uid 1000).
    public static let sandboxIDs: IDMapping? = {
        guard active, let u = try? FS.readText("/proc/self/uid_map"), let g = try? FS.readText("/proc/self/gid_map") else { return nil }
        return idsFrom(uidMap: u, gidMap: g)
    }()

    /// The sandboxes' ids given this namespace's maps (see `sandboxIDs`).
    static func idsFrom(uidMap u: String, gidMap g: String) -> IDMapping? {
        // The ids from 1 up that one map line covers: a line of its own (sandpit's own entry maps the
        // subordinate range at 1), or the line that also maps root (a container's `0 100000 65536`).
        func run(_ text: String) -> UInt32 {
            guard let l = parseMap(text).first(where: { $0.inside <= 1 && UInt64(1) < UInt64($0.inside) + UInt64($0.count) }) else { return 0 }
            return UInt32(min(UInt64(l.inside) + UInt64(l.count) - 1, 65_536))
        }
        let n = min(run(u), run(g))
        return n >= 1_001 ? IDMapping(hostBase: 1, count: n) : nil
    }

    /// Where a data dir goes by default: `/var/lib/sandpit` for root,
    /// `$XDG_DATA_HOME/sandpit` (or `~/.local/share/sandpit`) for anyone else,
    /// rootless mode included.
    public static var defaultDataDir: String {
        if geteuid() == 0 && !active { return "/var/lib/sandpit" }
        if let x = getenv("XDG_DATA_HOME").map({ String(cString: $0) }), x.hasPrefix("/") { return x + "/sandpit" }
        if let h = getenv("HOME").map({ String(cString: $0) }), h.hasPrefix("/"), h != "/" { return h + "/.local/share/sandpit" }
        let uid = getenv(marker).flatMap { UInt32(String(cString: $0)) } ?? getuid()
        let home = getpwuid(uid).flatMap { $0.pointee.pw_dir }.map { String(cString: $0) } ?? "/tmp"
        return home + "/.local/share/sandpit"
    }

    struct MapLine: Equatable { var inside: UInt32; var outside: UInt32; var count: UInt32 }

    static func parseMap(_ text: String) -> [MapLine] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
            return f.count == 3 ? MapLine(inside: f[0], outside: f[1], count: f[2]) : nil
        }
    }

    /// The first range of `/etc/subuid` (or `subgid`) for `user` (by name or
    /// by number): (start, count).
    public static func subordinateRange(in text: String, user: String, id: UInt32) -> (start: UInt32, count: UInt32)? {
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            guard f.count == 3, f[0] == user || f[0] == Substring(String(id)),
                  let start = UInt32(f[1]), let count = UInt32(f[2]), count > 0 else { continue }
            return (start, count)
        }
        return nil
    }

    public struct NotPossible: Error, CustomStringConvertible {
        public var description: String
    }

    /// Runs this program again as root of a user namespace of its own, mapped
    /// onto the user's subordinate ids, and exits with its status (signals
    /// are passed on). Throws, without starting anything, when the host does
    /// not allow it, saying what to change.
    public static func enter(arguments: [String], environment: [String]) throws -> Never {
        let uid = getuid(), gid = getgid()
        let user = getpwuid(uid).flatMap { $0.pointee.pw_name }.map { String(cString: $0) } ?? String(uid)
        let group = getgrgid(gid).flatMap { $0.pointee.gr_name }.map { String(cString: $0) } ?? String(gid)
        func tool(_ name: String) -> String? {
            let dirs = (getenv("PATH").map { String(cString: $0) } ?? "").split(separator: ":").map(String.init) + ["/usr/bin", "/bin", "/usr/sbin"]
            return dirs.map { $0 + "/" + name }.first { access($0, X_OK) == 0 }
        }
        guard let newuidmap = tool("newuidmap"), let newgidmap = tool("newgidmap") else {
            throw NotPossible(description: "rootless mode needs newuidmap and newgidmap to map a sandbox's users onto yours (Debian/Ubuntu: apt install uidmap; Fedora: dnf install shadow-utils); or run sandpit as root")
        }
        guard let subuid = subordinateRange(in: (try? FS.readText("/etc/subuid")) ?? "", user: user, id: uid),
              let subgid = subordinateRange(in: (try? FS.readText("/etc/subgid")) ?? "", user: group, id: gid)
                  ?? subordinateRange(in: (try? FS.readText("/etc/subgid")) ?? "", user: user, id: uid) else {
            throw NotPossible(description: "rootless mode needs a range of subordinate ids for \(user) in /etc/subuid and /etc/subgid (sandboxes run their users on them): as root, `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 \(user)`; or run sandpit as root")
        }
        guard subuid.count >= 1_001, subgid.count >= 1_001 else {
            throw NotPossible(description: "the subordinate id range of \(user) has \(min(subuid.count, subgid.count)) ids; sandboxes need at least 1,001 (65,536 is usual): widen it in /etc/subuid and /etc/subgid")
        }
        if let v = try? FS.readText("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"), v.trimmingWhitespace == "1" {
            // Ubuntu 24.04: the unshare below fails unless a profile allows it.
            throw NotPossible(description: "AppArmor forbids unprivileged user namespaces here (kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10+): allow sandpit with an AppArmor profile granting `userns,` (see docs/SECURITY.md), or run sandpit as root")
        }
        let exe = "/proc/self/exe"
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = (environment.filter { !$0.hasPrefix(marker + "=") } + ["\(marker)=\(uid)"]).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) }; for p in envp { free(p) } }
        var go: Int32 = -1
        let pid = argv.withUnsafeBufferPointer { a in envp.withUnsafeBufferPointer { e in sp_rootless_spawn(exe, a.baseAddress, e.baseAddress, &go) } }
        guard pid > 0 else {
            let e = errno
            throw NotPossible(description: "cannot make a user namespace as \(user) (unshare: \(String(cString: strerror(e)))): check that user namespaces are enabled (sysctl user.max_user_namespaces > 0" + (e == EPERM ? ", kernel.unprivileged_userns_clone=1 on Debian's older kernels" : "") + "), or run sandpit as root")
        }
        do {
            try HostCommand.run([newuidmap, String(pid), "0", String(uid), "1", "1", String(subuid.start), String(subuid.count)])
            try HostCommand.run([newgidmap, String(pid), "0", String(gid), "1", "1", String(subgid.start), String(subgid.count)])
        } catch {
            close(go)
            _ = sp_rootless_wait(pid)
            throw NotPossible(description: "cannot map ids for rootless mode: \(error)")
        }
        var one: UInt8 = 1
        _ = write(go, &one, 1)
        close(go)
        exit(sp_rootless_wait(pid))
    }
}
