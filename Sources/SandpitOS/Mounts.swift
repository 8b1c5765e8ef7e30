#if canImport(Glibc)
import Glibc
#endif
import CSandpit

/// Detached mounts built with the new mount API. The daemon builds them with
/// full privileges; the sandbox's agent attaches them inside its own mount
/// namespace, so they never appear in the host's mount table and vanish with
/// the sandbox.
public enum DetachedMount {
    /// An overlayfs with `lower` (top first), `upper` and `work`.
    public static func overlay(lower: [String], upper: String, work: String) throws(OSError) -> FileDescriptor {
        let fs = FileDescriptor(try sys("fsopen(overlay)") { sp_fsopen("overlay") })
        defer { fs.close() }
        // "lowerdir+" appends one layer at a time (no ':' escaping issues).
        for l in lower { _ = try sys("fsconfig(lowerdir+)", path: l) { sp_fsconfig_string(fs.raw, "lowerdir+", l) } }
        _ = try sys("fsconfig(upperdir)", path: upper) { sp_fsconfig_string(fs.raw, "upperdir", upper) }
        _ = try sys("fsconfig(workdir)", path: work) { sp_fsconfig_string(fs.raw, "workdir", work) }
        _ = try sys("fsconfig(create overlay)") { sp_fsconfig_create(fs.raw) }
        return FileDescriptor(try sys("fsmount(overlay)") { sp_fsmount(fs.raw, SP_MOUNT_ATTR_NODEV) })
    }

    /// A read-only overlayfs of `lower` only (top first): a hibernated
    /// sandbox's files as it would see them, without starting it.
    public static func readOnlyOverlay(lower: [String]) throws(OSError) -> FileDescriptor {
        let fs = FileDescriptor(try sys("fsopen(overlay)") { sp_fsopen("overlay") })
        defer { fs.close() }
        for l in lower { _ = try sys("fsconfig(lowerdir+)", path: l) { sp_fsconfig_string(fs.raw, "lowerdir+", l) } }
        _ = try sys("fsconfig(create overlay)") { sp_fsconfig_create(fs.raw) }
        return FileDescriptor(try sys("fsmount(overlay)") { sp_fsmount(fs.raw, SP_MOUNT_ATTR_NODEV | SP_MOUNT_ATTR_RDONLY | SP_MOUNT_ATTR_NOSUID) })
    }

    /// A recursive read-only, nosuid, nodev bind of `path`.
    public static func readOnlyBind(_ path: String) throws(OSError) -> FileDescriptor {
        let fd = FileDescriptor(try sys("open_tree", path: path) { sp_open_tree_clone(path) })
        _ = try sys("mount_setattr(ro)", path: path) {
            sp_mount_setattr(fd.raw, SP_MOUNT_ATTR_RDONLY | SP_MOUNT_ATTR_NOSUID | SP_MOUNT_ATTR_NODEV, 0, -1)
        }
        return fd
    }

    /// Makes `mount` show files through the id mapping of the user namespace
    /// `usernsFd` (host uid 0 appears as root inside the sandbox).
    public static func idmap(_ mount: FileDescriptor, usernsFd: Int32) throws(OSError) {
        _ = try sys("mount_setattr(idmap)") { sp_mount_setattr(mount.raw, SP_MOUNT_ATTR_IDMAP, 0, usernsFd) }
    }
}

/// Mount table inspection, for leak checks and reconciliation.
public enum MountTable {
    public static func mountPoints() -> [String] {
        guard let text = try? FS.readText("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count > 4 ? unescape(String(f[4])) : nil
        }
    }

    static func unescape(_ s: String) -> String {
        var out = ""
        var it = Array(s.utf8)[...]
        var bytes: [UInt8] = []
        while let c = it.first {
            if c == UInt8(ascii: "\\"), it.count >= 4, let v = UInt8(String(decoding: it.dropFirst().prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(v)
                it = it.dropFirst(4)
            } else {
                bytes.append(c)
                it = it.dropFirst()
            }
        }
        out = String(decoding: bytes, as: UTF8.self)
        return out
    }

    public static func unmount(_ path: String, detach: Bool = true) throws(OSError) {
        _ = try sys("umount2", path: path) { umount2(path, detach ? Int32(MNT_DETACH) : 0) }
    }
}

/// Swaps a live sandbox's root filesystem (an in-place restore): see
/// `sp_swap_root`. Runs on a new thread of its own, which leaves the
/// sandbox's mount namespace only by exiting; it never runs inline.
public enum RootSwap {
    public static func swap(agentPid: Int32, newRoot: FileDescriptor, moveUsr: Bool, tmpOptions: String) async throws {
        let nsPath = "/proc/\(agentPid)/ns/mnt"
        let ns = FileDescriptor(try sys("open", path: nsPath) { open(nsPath, O_RDONLY | O_CLOEXEC) })
        defer { ns.close() }
        let root = newRoot.raw, nsfd = ns.raw
        let result: Result<Void, OSError> = try await withCheckedThrowingContinuation { c in
            final class Box: @unchecked Sendable {
                let work: () -> Void
                init(_ w: @escaping () -> Void) { work = w }
            }
            let box = Unmanaged.passRetained(Box {
                var step: UnsafePointer<CChar>?
                let rc = sp_swap_root(nsfd, root, moveUsr ? 1 : 0, tmpOptions, &step)
                let e = errno
                c.resume(returning: rc == 0 ? .success(()) : .failure(OSError(call: step.map { String(cString: $0) } ?? "swap root", errno: e)))
            }).toOpaque()
            var tid = pthread_t()
            var attr = pthread_attr_t()
            pthread_attr_init(&attr)
            pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
            let rc = pthread_create(&tid, &attr, { p in
                Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().work()
                return nil
            }, box)
            pthread_attr_destroy(&attr)
            if rc != 0 {
                Unmanaged<Box>.fromOpaque(box).release()
                c.resume(throwing: OSError(call: "pthread_create", errno: rc))
            }
        }
        try result.get()
    }
}
