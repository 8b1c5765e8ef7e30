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

    public static let all = [overlayLowerdirAppend, idmappedMounts, sandboxOwnerIDs]

    /// Names forced off by `SANDPIT_DISABLE`.
    public static let disabled: Set<String> = {
        guard let v = getenv("SANDPIT_DISABLE") else { return [] }
        return Set(String(cString: v).split(separator: ",").map { String($0).trimmingWhitespace }.filter { !$0.isEmpty })
    }()

    public static func isDisabled(_ name: String) -> Bool { disabled.contains(name) }

    /// Whether overlayfs takes `lowerdir+`: probed on an overlay context that is never created.
    public static let hasOverlayLowerdirAppend: Bool = {
        if isDisabled(overlayLowerdirAppend) { return false }
        let fs = sp_fsopen("overlay")
        guard fs >= 0 else { return false }
        defer { close(fs) }
        return sp_fsconfig_string(fs, "lowerdir+", "/") == 0
    }()
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" || c == "\n" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\n" { s = s.dropLast() }
        return String(s)
    }
}
