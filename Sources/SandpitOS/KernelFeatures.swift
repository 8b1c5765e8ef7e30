#if canImport(Glibc)
import Glibc
#endif
import CSandpit

/// Kernel features Sandpit uses where the running kernel has them, each with
/// a fallback. Probed once per process; `SANDPIT_DISABLE` (a comma-separated
/// list of the names below) forces a fallback on a kernel that has the
/// feature, so every fallback can be tested on any host.
public enum KernelFeatures {
    /// overlayfs's `lowerdir+` (Linux 6.8+): one layer per fsconfig call.
    /// Without it the layers go in one classic `lowerdir=a:b` option.
    public static let overlayLowerdirAppend = "overlay-lowerdir-append"
    /// Idmapped mounts: the host's /usr shown with the sandbox's ids (root-owned
    /// inside). Without them /usr's files show as the overflow id (nobody).
    public static let idmappedMounts = "idmapped-mounts"
    /// A user namespace per sandbox owned by an id of its own, so per-user
    /// kernel limits (inotify instances and watches, POSIX message queue
    /// bytes) are charged per sandbox instead of to the daemon's root.
    public static let sandboxOwnerIDs = "sandbox-owner-ids"

    /// overlayfs layers on detached mounts (named through /proc/self/fd;
    /// Linux 6.15+ clones them). Without it each such mount is attached for
    /// the moment the overlay is created, under `attachDir`, then detached.
    public static let overlayDetachedLayers = "overlay-detached-layers"

    public static let all = [overlayLowerdirAppend, overlayDetachedLayers, idmappedMounts, sandboxOwnerIDs]

    /// Where detached mounts are attached for a moment on kernels without
    /// `overlayDetachedLayers` (the daemon sets it to a directory of its data dir).
    nonisolated(unsafe) public static var attachDir = "/run/sandpit-attach"

    /// Whether overlayfs takes layers on detached mounts: probed by creating
    /// an overlay of two directories of a detached tmpfs.
    public static let hasOverlayDetachedLayers: Bool = {
        if isDisabled(overlayDetachedLayers) { return false }
        let t = sp_fsopen("tmpfs")
        guard t >= 0 else { return false }
        defer { close(t) }
        guard sp_fsconfig_create(t) == 0 else { return false }
        let m = sp_fsmount(t, 0)
        guard m >= 0 else { return false }
        defer { close(m) }
        guard mkdirat(m, "a", 0o755) == 0, mkdirat(m, "b", 0o755) == 0 else { return false }
        let fs = sp_fsopen("overlay")
        guard fs >= 0 else { return false }
        defer { close(fs) }
        return sp_fsconfig_string(fs, "lowerdir", "/proc/self/fd/\(m)/a:/proc/self/fd/\(m)/b") == 0 && sp_fsconfig_create(fs) == 0
    }()

    /// Names forced off by `SANDPIT_DISABLE`.
    public static let disabled: Set<String> = {
        guard let v = getenv("SANDPIT_DISABLE") else { return [] }
        return Set(String(cString: v).split(separator: ",").map { String($0).trimmingWhitespace }.filter { !$0.isEmpty })
    }()

    public static func isDisabled(_ name: String) -> Bool { disabled.contains(name) }

    /// Whether overlayfs takes `lowerdir+`: probed by creating (not
    /// mounting) a read-only overlay of two empty directories with it. Setting
    /// the key alone proves nothing: before Linux 6.5 overlayfs took its
    /// options the legacy way, where any key is accepted until the create.
    public static let hasOverlayLowerdirAppend: Bool = {
        if isDisabled(overlayLowerdirAppend) { return false }
        var template = Array("/tmp/sandpit-probe-XXXXXX".utf8CString)
        guard let base = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else { return false }
        defer { rmdir(base + "/a"); rmdir(base + "/b"); rmdir(base) }
        guard mkdir(base + "/a", 0o755) == 0, mkdir(base + "/b", 0o755) == 0 else { return false }
        let fs = sp_fsopen("overlay")
        guard fs >= 0 else { return false }
        defer { close(fs) }
        return sp_fsconfig_string(fs, "lowerdir+", base + "/a") == 0 && sp_fsconfig_string(fs, "lowerdir+", base + "/b") == 0
            && sp_fsconfig_create(fs) == 0
    }()
}

extension KernelFeatures {
    /// The running kernel's release (`uname -r`).
    public static var release: String {
        var u = utsname()
        guard uname(&u) == 0 else { return "?" }
        return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// One host fact Sandpit depends on: whether it is usable, and what
    /// Sandpit does (or cannot do) without it.
    public struct Check: Sendable {
        public var name: String
        public var ok: Bool
        public var detail: String
        /// Without it no sandbox can be made.
        public var required: Bool
        public init(_ name: String, _ ok: Bool, _ detail: String, required: Bool = false) {
            self.name = name
            self.ok = ok
            self.detail = detail
            self.required = required
        }
    }

    static func readInt(_ path: String) -> Int? {
        (try? FS.readText(path)).flatMap { Int($0.trimmingWhitespace) }
    }

    /// The kernel facilities, probed now (cheap; nothing is left behind).
    public static func checks() -> [Check] {
        var out: [Check] = []
        let maxNS = readInt("/proc/sys/user/max_user_namespaces") ?? 0
        out.append(Check("user namespaces", maxNS > 0, maxNS > 0 ? "up to \(maxNS)" : "user.max_user_namespaces is 0: no sandbox can be made", required: true))
        if let v = readInt("/proc/sys/kernel/unprivileged_userns_clone") {
            out.append(Check("unprivileged_userns_clone (Debian)", v == 1 || !Rootless.active,
                             v == 1 ? "1" : "0: only root may create user namespaces (as root this is fine; rootless mode cannot work)"))
        }
        if let v = readInt("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
            // Ubuntu 23.10+: an unprivileged process needs an AppArmor profile granting `userns`.
            out.append(Check("AppArmor user namespace restriction", v == 0 || !Rootless.active,
                             v == 0 ? "off" : "on: as root this is fine; rootless mode needs an AppArmor profile granting `userns,` to sandpit"))
        }
        if let v = readInt("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
            out.append(Check("apparmor_restrict_unprivileged_userns (Ubuntu)", true, v == 1 ? "1: restricts unprivileged callers only; the daemon keeps its capabilities when it creates them" : "0"))
        }
        let fs = sp_fsopen("tmpfs")
        if fs >= 0 { close(fs) }
        out.append(Check("new mount API (fsopen, fsmount, move_mount)", fs >= 0, fs >= 0 ? "yes" : "missing (Linux 5.2+ needed)", required: true))
        let ov = sp_fsopen("overlay")
        if ov >= 0 { close(ov) }
        out.append(Check("overlayfs", ov >= 0, ov >= 0 ? "yes" : "missing: modprobe overlay", required: true))
        out.append(Check("overlayfs lowerdir+", hasOverlayLowerdirAppend,
                         hasOverlayLowerdirAppend ? "yes" : "no (Linux < 6.8, or forced off): layers in one classic lowerdir of /proc/self/fd names, at most ~14 layers"))
        out.append(Check("overlayfs layers on detached mounts", hasOverlayDetachedLayers,
                         hasOverlayDetachedLayers ? "yes" : "no (Linux < 6.15, or forced off): each layer's mount is attached under <data>/attach for the moment of the create"))
        if Rootless.active {
            out.append(Check("loop devices", false, "not usable rootless: sandbox disks are directories of the store, without a size or inode limit"))
        } else {
            let loop = FS.exists("/dev/loop-control")
            out.append(Check("loop devices", loop, loop ? "yes" : "no /dev/loop-control (modprobe loop): sandboxes have no disk of their own; use --storage dir"))
        }
        let seccomp = (try? FS.readText("/proc/self/status"))?.contains("Seccomp:") ?? false
        out.append(Check("seccomp", seccomp, seccomp ? "yes" : "missing: sandboxes cannot start (the filter is required)", required: true))
        let pidfd = sp_pidfd_open_probe() != 0
        out.append(Check("pidfd", pidfd, pidfd ? "yes" : "missing (Linux 5.3+ needed)", required: true))
        let openat2 = sp_openat2_probe() != 0
        out.append(Check("openat2 (RESOLVE_IN_ROOT)", openat2, openat2 ? "yes" : "missing (Linux 5.6+): file calls cannot be confined", required: true))
        for name in all where isDisabled(name) { out.append(Check("forced off: " + name, true, "SANDPIT_DISABLE")) }
        return out
    }
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" || c == "\n" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\n" { s = s.dropLast() }
        return String(s)
    }
}
