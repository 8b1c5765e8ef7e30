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
        var held: [FileDescriptor] = []
        var attached: [String] = []
        defer { for h in held { h.close() }; detach(attached) }
        let layers = try attachingDetached(lower + [upper, work], attached: &attached)
        try setLower(fs, Array(layers.dropLast(2)), holding: &held)
        let u = try short(layers[layers.count - 2], holding: &held), w = try short(layers[layers.count - 1], holding: &held)
        _ = try sys("fsconfig(upperdir)", path: upper) { sp_fsconfig_string(fs.raw, "upperdir", u) }
        _ = try sys("fsconfig(workdir)", path: work) { sp_fsconfig_string(fs.raw, "workdir", w) }
        if Rootless.active { _ = try sys("fsconfig(userxattr)") { sp_fsconfig_flag(fs.raw, "userxattr") } }
        _ = try sys("fsconfig(create overlay)") { sp_fsconfig_create(fs.raw) }
        return FileDescriptor(try sys("fsmount(overlay)") { sp_fsmount(fs.raw, SP_MOUNT_ATTR_NODEV) })
    }

    /// A read-only overlayfs of `lower` only (top first): a hibernated
    /// sandbox's files as it would see them, without starting it.
    public static func readOnlyOverlay(lower: [String]) throws(OSError) -> FileDescriptor {
        let fs = FileDescriptor(try sys("fsopen(overlay)") { sp_fsopen("overlay") })
        defer { fs.close() }
        var held: [FileDescriptor] = []
        var attached: [String] = []
        defer { for h in held { h.close() }; detach(attached) }
        try setLower(fs, try attachingDetached(lower, attached: &attached), holding: &held)
        if Rootless.active { _ = try sys("fsconfig(userxattr)") { sp_fsconfig_flag(fs.raw, "userxattr") } }
        _ = try sys("fsconfig(create overlay)") { sp_fsconfig_create(fs.raw) }
        return FileDescriptor(try sys("fsmount(overlay)") { sp_fsmount(fs.raw, SP_MOUNT_ATTR_NODEV | SP_MOUNT_ATTR_RDONLY | SP_MOUNT_ATTR_NOSUID) })
    }

    /// On kernels whose overlayfs cannot take layers on detached mounts,
    /// attaches each detached mount a layer path names (`/proc/self/fd/N/...`)
    /// at a directory of `KernelFeatures.attachDir` and returns the paths
    /// rewritten to it; `detach` undoes that once the overlay exists (it holds
    /// private clones of its layers by then). The descriptors stay usable:
    /// a lazily detached mount serves what is opened through it.
    static func attachingDetached(_ paths: [String], attached: inout [String]) throws(OSError) -> [String] {
        guard !KernelFeatures.hasOverlayDetachedLayers else { return paths }
        var out: [String] = []
        var byFd: [Int32: String] = [:]
        for p in paths {
            guard p.hasPrefix("/proc/self/fd/") else { out.append(p); continue }
            let rest = p.dropFirst("/proc/self/fd/".count)
            let num = rest.prefix { $0.isNumber }
            guard let fd = Int32(num) else { out.append(p); continue }
            let tail = String(rest.dropFirst(num.count))
            if let at = byFd[fd] { out.append(at + tail); continue }
            let dir = try attachPoint("m")
            if sp_move_mount_fd(fd, dir) != 0 {
                let e = errno
                rmdir(dir)
                // Already attached (a mount kept attached for good): use it where it is.
                if e == EINVAL { out.append(p); continue }
                throw OSError(call: "attach a layer's mount", errno: e, path: dir)
            }
            attached.append(dir)
            byFd[fd] = dir
            out.append(dir + tail)
        }
        return out
    }

    /// A new empty directory under `KernelFeatures.attachDir` to attach a
    /// detached mount on for a moment (`clearAttachments` removes leftovers).
    static func attachPoint(_ prefix: String) throws(OSError) -> String {
        try FS.mkdirs(KernelFeatures.attachDir, mode: 0o700)
        var template = Array((KernelFeatures.attachDir + "/\(prefix)-XXXXXX").utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            throw OSError(call: "mkdtemp", errno: errno, path: KernelFeatures.attachDir)
        }
        return dir
    }

    static func detach(_ attached: [String]) {
        for dir in attached {
            _ = umount2(dir, Int32(MNT_DETACH))
            rmdir(dir)
        }
    }

    /// Unmounts and removes what a daemon that died left attached.
    public static func clearAttachments() {
        for name in FS.listDirectory(KernelFeatures.attachDir) {
            let dir = KernelFeatures.attachDir + "/" + name
            _ = umount2(dir, Int32(MNT_DETACH))
            rmdir(dir)
        }
    }

    /// fsconfig takes strings of at most 255 bytes (longer is EINVAL).
    static let maxParam = 255

    /// `path`, or a short /proc/self/fd name for it when it is too long for
    /// fsconfig; the descriptor goes in `held` and must stay open until the
    /// filesystem is created (older kernels resolve paths only then).
    static func short(_ path: String, holding held: inout [FileDescriptor], always: Bool = false) throws(OSError) -> String {
        guard always || path.utf8.count > maxParam else { return path }
        let fd = FileDescriptor(try sys("open", path: path) { open(path, 0o10_000_000 /* O_PATH */ | O_DIRECTORY | O_CLOEXEC) })
        held.append(fd)
        return "/proc/self/fd/\(fd.raw)"
    }

    /// The lower layers, top first: one `lowerdir+` per layer where the
    /// kernel has it (Linux 6.8), else the classic colon-separated `lowerdir`
    /// in one string, each layer named by a descriptor so that the list fits
    /// fsconfig's 255 bytes (about 14 layers).
    static func setLower(_ fs: FileDescriptor, _ lower: [String], holding held: inout [FileDescriptor]) throws(OSError) {
        if KernelFeatures.hasOverlayLowerdirAppend {
            for l in lower {
                let p = try short(l, holding: &held)
                _ = try sys("fsconfig(lowerdir+)", path: l) { sp_fsconfig_string(fs.raw, "lowerdir+", p) }
            }
            return
        }
        var names: [String] = []
        for l in lower { names.append(try short(l, holding: &held, always: true)) }
        let joined = names.joined(separator: ":")
        guard joined.utf8.count <= maxParam else {
            throw OSError(call: "overlay with \(lower.count) layers (this kernel's overlayfs takes them in one 255-byte option; Linux 6.8 lifts the limit)", errno: E2BIG)
        }
        _ = try sys("fsconfig(lowerdir)", path: lower.first ?? "") { sp_fsconfig_string(fs.raw, "lowerdir", joined) }
    }

    /// A sandbox's /dev: a small tmpfs (nosuid, noexec) with device nodes of
    /// its own (null, zero, full, random, urandom, tty), owned by the
    /// sandbox's root (`owner`, a host uid). The sandbox cannot add nodes
    /// (mknod needs CAP_MKNOD on the host); the ones here work because the
    /// daemon made the filesystem.
    public static func devices(owner: UInt32) throws(OSError) -> FileDescriptor {
        let fs = FileDescriptor(try sys("fsopen(tmpfs)") { sp_fsopen("tmpfs") })
        defer { fs.close() }
        _ = try sys("fsconfig(size)") { sp_fsconfig_string(fs.raw, "size", "65536") }
        _ = try sys("fsconfig(nr_inodes)") { sp_fsconfig_string(fs.raw, "nr_inodes", "256") }
        _ = try sys("fsconfig(mode)") { sp_fsconfig_string(fs.raw, "mode", "755") }
        _ = try sys("fsconfig(uid)") { sp_fsconfig_string(fs.raw, "uid", String(owner)) }
        _ = try sys("fsconfig(gid)") { sp_fsconfig_string(fs.raw, "gid", String(owner)) }
        _ = try sys("fsconfig(create tmpfs)") { sp_fsconfig_create(fs.raw) }
        let m = FileDescriptor(try sys("fsmount(tmpfs)") { sp_fsmount(fs.raw, SP_MOUNT_ATTR_NOSUID | SP_MOUNT_ATTR_NOEXEC) })
        let nodes: [(String, UInt32, UInt32)] = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
        if Rootless.active {
            defer { m.close() }
            return try boundDevices(m, names: nodes.map(\.0), owner: owner)
        }
        for (name, major, minor) in nodes {
            let dev = dev_t((major & 0xfff) << 8 | (minor & 0xff) | (minor & ~0xff) << 12)
            _ = try sys("mknod /dev/" + name) { mknodat(m.raw, name, S_IFCHR | 0o666, dev) }
            // mknod applies the umask.
            _ = try sys("chmod /dev/" + name) { fchmodat(m.raw, name, 0o666, 0) }
            _ = try sys("chown /dev/" + name) { fchownat(m.raw, name, owner, owner, Int32(AT_SYMLINK_NOFOLLOW)) }
        }
        return m
    }

    /// Rootless mode's /dev: a user namespace may not make device nodes
    /// (and a tmpfs it mounts ignores them), so the host's own nodes are
    /// bound onto empty files of the tmpfs `m`, which is attached for the
    /// moment under `KernelFeatures.attachDir` and handed back as a detached
    /// copy, binds included.
    static func boundDevices(_ m: FileDescriptor, names: [String], owner: UInt32) throws(OSError) -> FileDescriptor {
        let dir = try attachPoint("dev")
        defer { rmdir(dir) }
        _ = try sys("attach /dev", path: dir) { sp_move_mount_fd(m.raw, dir) }
        defer { _ = umount2(dir, Int32(MNT_DETACH)) }
        for name in names {
            let target = dir + "/" + name
            let fd = try sys("create /dev/" + name, path: target) { open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666) }
            close(fd)
            _ = try sys("bind /dev/" + name, path: target) { mount("/dev/" + name, target, nil, UInt(MS_BIND), nil) }
        }
        _ = try sys("chown /dev", path: dir) { chown(dir, owner, owner) }
        return FileDescriptor(try sys("open_tree(/dev)", path: dir) { sp_open_tree_clone(dir) })
    }

    /// A recursive read-only, nosuid, nodev bind of `path`.
    public static func readOnlyBind(_ path: String) throws(OSError) -> FileDescriptor {
        let fd = FileDescriptor(try sys("open_tree", path: path) { sp_open_tree_clone(path) })
        _ = try sys("mount_setattr(ro)", path: path) {
            sp_mount_setattr(fd.raw, SP_MOUNT_ATTR_RDONLY | SP_MOUNT_ATTR_NOSUID | SP_MOUNT_ATTR_NODEV, 0, -1)
        }
        return fd
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

/// The host's /usr as each sandbox sees it: a read-only overlayfs of its own
/// per sandbox, over one read-only (and, where the kernel allows, idmapped)
/// clone of the host's /usr that the daemon keeps.
///
/// A bind of /usr would hand every sandbox the host's own inodes, and file
/// locks live on inodes: a `flock` on /usr/bin/python3 in one sandbox would
/// block the same lock in every other sandbox and on the host (a covert
/// channel, and a way to stall host programs). An overlay is a superblock of
/// its own, with inodes (and so locks and leases) of its own.
public final class HostUsr: Sendable {
    /// The daemon's clone of /usr, reached by the overlays through /proc/self/fd.
    let base: FileDescriptor
    /// An empty directory: a read-only overlay needs two lower layers.
    let emptyDir: String
    /// How the overlays name `base`: through /proc/self/fd, or where it is
    /// attached for good on kernels whose overlayfs cannot take detached layers.
    let basePath: String
    public let idmapped: Bool

    /// `mapping` is a user namespace whose map is the sandboxes' (nil: no idmapping).
    public init(emptyDir: String, mapping: FileDescriptor?) throws(OSError) {
        let fd = FileDescriptor(try sys("open_tree", path: "/usr") { sp_open_tree_clone("/usr") })
        _ = try sys("mount_setattr(ro)", path: "/usr") {
            sp_mount_setattr(fd.raw, SP_MOUNT_ATTR_RDONLY | SP_MOUNT_ATTR_NOSUID | SP_MOUNT_ATTR_NODEV, 0, -1)
        }
        var mapped = false
        if let mapping, !KernelFeatures.isDisabled(KernelFeatures.idmappedMounts) {
            mapped = sp_mount_setattr(fd.raw, SP_MOUNT_ATTR_IDMAP, 0, mapping.raw) == 0
        }
        try FS.mkdirs(emptyDir, mode: 0o755)
        if KernelFeatures.hasOverlayDetachedLayers {
            basePath = "/proc/self/fd/\(fd.raw)"
        } else {
            let at = KernelFeatures.attachDir + "/usr"
            try FS.mkdirs(at, mode: 0o755)
            _ = try sys("attach /usr clone", path: at) { sp_move_mount_fd(fd.raw, at) }
            basePath = at
        }
        base = fd
        self.emptyDir = emptyDir
        idmapped = mapped
    }

    /// A new read-only, nosuid, nodev overlay of /usr for one sandbox.
    public func mount() throws(OSError) -> FileDescriptor {
        try DetachedMount.readOnlyOverlay(lower: [basePath, emptyDir])
    }

    public func close() {
        if !basePath.hasPrefix("/proc/") { _ = umount2(basePath, Int32(MNT_DETACH)); rmdir(basePath) }
        base.close()
    }
}
