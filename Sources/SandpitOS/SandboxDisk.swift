#if canImport(Glibc)
import Glibc
#endif
import CSandpit

/// A sandbox's writable layer on its own ext4 image, so its size and inode
/// count are hard limits (the host kernel has no quota support, and a shared
/// filesystem could not give one sandbox ENOSPC while the others keep going).
///
/// The image is a sparse copy of a pre-formatted blank one (formatted once per
/// size and inode count, ~2 MiB of metadata), attached to a loop device with
/// autoclear and mounted *detached*: the mount is in no namespace, so it never
/// shows in the host's mount table and goes away, loop device included,
/// when the last reference (the overlay using it, our fd) is gone.
///
/// Rootless mode has no loop devices (and a user namespace may not mount
/// ext4): a sandbox's disk is then a directory at the image's path, laid out
/// the same way (`upper`, `work`), with no size or inode limit of its own.
/// Copies of it (checkpoints, restores, forks) are tree copies, by reference
/// where the store's filesystem can (XFS, btrfs), and a step that changed
/// nothing shares its files with the previous checkpoint through hard links.
public enum SandboxDisk {
    /// Whether sandbox disks are directories (rootless mode).
    public static var directories: Bool { Rootless.active }

    /// Layout inside the image: overlay's upper and work directories.
    public static let upper = "upper"
    public static let work = "work"

    /// Creates `image` for a sandbox: a sparse copy of the blank image for
    /// `bytes`/`inodes` whose `upper` directory is owned by `rootUid` (the
    /// sandbox's root as seen from the host).
    public static func create(image: String, storage: StorageVolume, bytes: Int64, inodes: Int64?, rootUid: UInt32) throws {
        if directories {
            let tmp = image + ".tmp"
            try? FS.removeTree(tmp)
            try FS.mkdir(tmp, mode: 0o755)
            try FS.mkdir(tmp + "/" + upper, mode: 0o755)
            try FS.mkdir(tmp + "/" + work, mode: 0o700)
            try FS.chown(tmp + "/" + upper, uid: rootUid, gid: rootUid)
            try FS.chmod(tmp + "/" + upper, 0o755)
            _ = try sys("rename", path: image) { rename(tmp, image) }
            return
        }
        let blank = try ensureBlank(dir: storage.root + "/blank", bytes: bytes, inodes: inodes, rootUid: rootUid)
        try storage.copyFile(blank, to: image)
    }

    /// A point-in-time copy of a mounted sandbox disk: every writer is held,
    /// the filesystem's writes are flushed, `during` runs (to read the layer
    /// consistently), the image is cloned to `copy`, and the writers go on,
    /// whatever happens.
    ///
    /// Writers are held by `quiesce` when it can (it stops every process that
    /// could write, the sandbox's and the daemon's own file calls, and returns
    /// what lets them go), else by freezing the filesystem (`FIFREEZE`).
    /// The freeze takes three per-superblock locks whose write side waits an
    /// RCU grace period each when none was taken lately: ~40 ms for a step an
    /// agent takes after thinking, against ~1 ms for a `syncfs` with the
    /// writers held.
    public static func snapshot<T>(mount: FileDescriptor, image: String, to copy: String, storage: StorageVolume,
                                   quiesce: () -> (() -> Void)? = { nil }, during: () throws -> T) throws -> T {
        // The mount fd is a path handle; ioctls need a file opened on the filesystem.
        let root = FileDescriptor(try sys("open", path: image) { openat(mount.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) })
        defer { root.close() }
        // A directory disk has no filesystem of its own to sync or freeze:
        // without a cgroup freezer (rootless, no delegated cgroup) a
        // background process may be mid-write in the copy.
        let directory = FS.isDirectory(image)
        let release = quiesce()
        defer { release?() }
        var frozen = false
        defer { if frozen { _ = sp_fs_thaw(root.raw) } }
        if release != nil, !directory {
            _ = try sys("sync sandbox disk", path: image) { sp_fs_sync(root.raw) }
        } else if release == nil, !directory {
            _ = try sys("freeze sandbox disk", path: image) { sp_fs_freeze(root.raw) }
            frozen = true
        }
        let r = try during()
        try Self.copy(image, to: copy, storage: storage)
        return r
    }

    /// Thaws and lets go of sandbox disks a dead daemon left behind: a
    /// daemon killed mid-checkpoint leaves its disk's filesystem frozen, and
    /// a frozen filesystem keeps itself (its superblock, its loop device, the
    /// image's blocks) alive with no mount left. Each loop device backed by a
    /// file under `dir` is mounted again (the kernel hands back the same
    /// superblock), thawed (a filesystem that is not frozen says EINVAL, which
    /// is fine) and let go: autoclear then frees the device. Returns the
    /// images it thawed.
    public static func releaseLeftovers(under dir: String) -> [String] {
        var thawed: [String] = []
        for dev in FS.listDirectory("/sys/block") where dev.hasPrefix("loop") {
            guard let backing = try? FS.readText("/sys/block/\(dev)/loop/backing_file"),
                  backing.hasPrefix(dir) else { continue }
            let image = String(backing.split(separator: "\n").first ?? "")
            guard let fs = try? FileDescriptor(sys("fsopen(ext4)") { sp_fsopen("ext4") }) else { continue }
            defer { fs.close() }
            guard (try? sys("fsconfig(source)") { sp_fsconfig_string(fs.raw, "source", "/dev/" + dev) }) != nil,
                  (try? sys("fsconfig(create ext4)") { sp_fsconfig_create(fs.raw) }) != nil,
                  let m = try? FileDescriptor(sys("fsmount(ext4)") { sp_fsmount(fs.raw, SP_MOUNT_ATTR_NODEV | SP_MOUNT_ATTR_NOSUID) }) else { continue }
            defer { m.close() }
            let root = openat(m.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard root >= 0 else { continue }
            if sp_fs_thaw(root) == 0 { thawed.append(image) }
            close(root)
        }
        return thawed
    }

    /// Mounts `image` (detached, nodev, nosuid, noatime). The returned fd is
    /// the mount; `/proc/self/fd/N/upper` names its upper directory.
    public static func mount(_ image: String) throws(OSError) -> FileDescriptor {
        if FS.isDirectory(image) {
            return FileDescriptor(try sys("open", path: image) { open(image, O_RDONLY | O_DIRECTORY | O_CLOEXEC) })
        }
        let backing = FileDescriptor(try sys("open", path: image) { open(image, O_RDWR | O_CLOEXEC) })
        defer { backing.close() }
        var dev = [CChar](repeating: 0, count: 64)
        let loop = FileDescriptor(try sys("attach loop device", path: image) { sp_loop_attach(backing.raw, &dev, dev.count) })
        defer { loop.close() }   // the mount keeps the device; autoclear frees it after
        let devPath = String(decoding: dev.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let fs = FileDescriptor(try sys("fsopen(ext4)") { sp_fsopen("ext4") })
        defer { fs.close() }
        _ = try sys("fsconfig(source)", path: devPath) { sp_fsconfig_string(fs.raw, "source", devPath) }
        // Freed blocks are discarded (the loop device punches them out of the
        // image): without it a checkpoint's clone of the image kept every block
        // the sandbox ever wrote and deleted, and the store grew by all of it.
        _ = try sys("fsconfig(discard)", path: image) { sp_fsconfig_flag(fs.raw, "discard") }
        _ = try sys("fsconfig(noinit_itable)", path: image) { sp_fsconfig_flag(fs.raw, "noinit_itable") }
        _ = try sys("fsconfig(create ext4)", path: image) { sp_fsconfig_create(fs.raw) }
        return FileDescriptor(try sys("fsmount(ext4)", path: image) {
            sp_fsmount(fs.raw, SP_MOUNT_ATTR_NODEV | SP_MOUNT_ATTR_NOSUID | SP_MOUNT_ATTR_NOATIME)
        })
    }

    /// A detached tmpfs of `bytes` (and at most `inodes` inodes) laid out like
    /// an image (`upper` owned by `rootUid`, `work`): a scratch writable layer
    /// for a sandbox whose files need not outlive it. Its pages are charged to
    /// the memory cgroup of whoever writes them, i.e. the sandbox.
    public static func scratch(bytes: Int64, inodes: Int64?, rootUid: UInt32) throws(OSError) -> FileDescriptor {
        let fs = FileDescriptor(try sys("fsopen(tmpfs)") { sp_fsopen("tmpfs") })
        defer { fs.close() }
        _ = try sys("fsconfig(size)") { sp_fsconfig_string(fs.raw, "size", String(bytes)) }
        if let n = inodes { _ = try sys("fsconfig(nr_inodes)") { sp_fsconfig_string(fs.raw, "nr_inodes", String(n)) } }
        _ = try sys("fsconfig(mode)") { sp_fsconfig_string(fs.raw, "mode", "755") }
        _ = try sys("fsconfig(create tmpfs)") { sp_fsconfig_create(fs.raw) }
        let m = FileDescriptor(try sys("fsmount(tmpfs)") {
            sp_fsmount(fs.raw, SP_MOUNT_ATTR_NODEV | SP_MOUNT_ATTR_NOSUID | SP_MOUNT_ATTR_NOATIME)
        })
        do {
            _ = try sys("mkdir", path: upper) { mkdirat(m.raw, upper, 0o755) }
            _ = try sys("mkdir", path: work) { mkdirat(m.raw, work, 0o700) }
            _ = try sys("chown", path: upper) { fchownat(m.raw, upper, rootUid, rootUid, 0) }
            // Explicit: a umask must not narrow the sandbox's root directory.
            _ = try sys("chmod", path: upper) { fchmodat(m.raw, upper, 0o755, 0) }
        } catch {
            m.close()
            throw error
        }
        return m
    }

    public static func path(in mount: FileDescriptor, _ sub: String) -> String { "/proc/self/fd/\(mount.raw)/\(sub)" }

    /// Makes `dst` (which must not exist) a copy of the disk `src`: a clone of
    /// an image, or of a directory disk's tree (owners, modes, xattrs such as
    /// overlayfs's `user.overlay.*`, whiteouts, hard links).
    public static func copy(_ src: String, to dst: String, storage: StorageVolume) throws {
        guard FS.isDirectory(src) else { return try storage.copyFile(src, to: dst) }
        do {
            try LayerFS.copyTree(src, to: dst, byReference: true)
        } catch {
            try? FS.removeTree(dst)
            throw error
        }
    }

    /// Makes `dst` share `src`'s data for good: a hard link to an image, or a
    /// tree of hard links to a directory disk's files. Only for copies
    /// nothing writes to (checkpoints). False when that cannot be done.
    public static func share(_ src: String, as dst: String) -> Bool {
        guard FS.isDirectory(src) else { return link(src, dst) == 0 }
        if (try? HostCommand.run(["cp", "--archive", "--link", "--no-target-directory", src, dst])) != nil { return true }
        try? FS.removeTree(dst)
        return false
    }

    /// Removes a disk or a copy of one, image or directory.
    public static func remove(_ path: String) {
        if FS.isDirectory(path) { try? FS.removeTree(path) } else { unlink(path) }
    }

    /// Puts the disk `staged` in place of `image` (whose old content goes).
    public static func replace(_ image: String, with staged: String) throws {
        guard FS.isDirectory(staged), FS.isDirectory(image) else {
            _ = try sys("rename", path: image) { rename(staged, image) }
            return
        }
        _ = try sys("rename (exchange)", path: image) { sp_rename_exchange(staged, image) }
        try? FS.removeTree(staged)
    }

    static func ensureBlank(dir: String, bytes: Int64, inodes: Int64?, rootUid: UInt32) throws -> String {
        let path = dir + "/ext4b4k-\(bytes)-\(inodes.map(String.init) ?? "auto")-\(rootUid).img"
        if FS.exists(path) { return path }
        try FS.mkdirs(dir, mode: 0o700)
        // Concurrent creators each build their own copy and the rename makes one win.
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let skel = dir + "/skel-" + tag, tmp = path + "." + tag
        defer { try? FS.removeTree(skel); unlink(tmp) }
        try FS.mkdir(skel, mode: 0o755)
        try FS.mkdir(skel + "/" + upper, mode: 0o755)
        try FS.mkdir(skel + "/" + work, mode: 0o700)
        try FS.chown(skel + "/" + upper, uid: rootUid, gid: rootUid)
        // Explicit modes: the image is cached, so a stray umask must not bake into it.
        try FS.chmod(skel, 0o755)
        try FS.chmod(skel + "/" + upper, 0o755)
        try FS.chmod(skel + "/" + work, 0o700)
        let fd = try sys("open", path: tmp) { open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
        let rc = ftruncate(fd, off_t(bytes))
        close(fd)
        if rc != 0 { throw OSError(call: "ftruncate", errno: errno, path: tmp) }
        // No journal: a sandbox layer is scratch space reconciled on start;
        // lazy init keeps the image ~2 MiB however large the disk.
        // 4 KiB blocks always: mkfs picks 1 KiB for small disks, which a loop
        // device in direct-I/O mode (logical blocks of the store's size) refuses.
        var argv = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", "-m", "0", "-E", "lazy_itable_init=1,root_owner=0:0", "-d", skel]
        if let n = inodes { argv += ["-N", String(n)] }
        try HostCommand.run(argv + [tmp])
        _ = try sys("rename", path: path) { rename(tmp, path) }
        return path
    }
}

/// A checkpoint image's checksum (CRC-32C of its size, data layout and data:
/// see sp_checksum.c), kept beside it as `<image>.sum` with the file's
/// identity as it was then (inode, size, modification time): a use that finds
/// the file as sealed trusts it without reading it again; any write into the
/// image changes its modification time and brings the full comparison.
public struct ImageChecksum: Sendable, Equatable {
    public var crc: UInt32
    public var dataBytes: UInt64
    public var stamp: Stamp

    /// What changes when the image's bytes are written through the filesystem.
    public struct Stamp: Sendable, Equatable {
        public var inode: UInt64
        public var size: Int64
        public var mtimeNs: Int64

        init(inode: UInt64, size: Int64, mtimeNs: Int64) {
            self.inode = inode
            self.size = size
            self.mtimeNs = mtimeNs
        }

        init(_ st: stat) {
            self.init(inode: UInt64(st.st_ino), size: Int64(st.st_size), mtimeNs: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec))
        }

        public static func of(_ path: String) -> Stamp? {
            var st = stat()
            return stat(path, &st) == 0 ? Stamp(st) : nil
        }
    }

    public static func compute(_ image: String) throws(OSError) -> ImageChecksum {
        let fd = FileDescriptor(try sys("open", path: image) { open(image, O_RDONLY | O_CLOEXEC) })
        defer { fd.close() }
        // The stamp first: a write during the read shows as a changed stamp later.
        var st = stat()
        _ = try sys("fstat", path: image) { fstat(fd.raw, &st) }
        var crc: UInt32 = 0, bytes: UInt64 = 0
        _ = try sys("checksum", path: image) { sp_sparse_crc32c(fd.raw, &crc, &bytes) }
        return ImageChecksum(crc: crc, dataBytes: bytes, stamp: Stamp(st))
    }

    public var text: String { "crc32c \(String(crc, radix: 16)) \(dataBytes) \(stamp.inode) \(stamp.size) \(stamp.mtimeNs)\n" }

    public init(crc: UInt32, dataBytes: UInt64, stamp: Stamp) {
        self.crc = crc
        self.dataBytes = dataBytes
        self.stamp = stamp
    }

    public init?(text: String) {
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count == 6, f[0] == "crc32c", let c = UInt32(f[1], radix: 16), let b = UInt64(f[2]),
              let ino = UInt64(f[3]), let size = Int64(f[4]), let m = Int64(f[5]) else { return nil }
        crc = c
        dataBytes = b
        stamp = Stamp(inode: ino, size: size, mtimeNs: m)
    }

    /// The same bytes as `other` (the stamps may differ).
    public func sameData(_ other: ImageChecksum) -> Bool { crc == other.crc && dataBytes == other.dataBytes }

    /// Writes `<image>.sum` (through a temporary name).
    public func write(for image: String) throws(OSError) {
        try FS.writeBytes(image + ".sum.tmp", Array(text.utf8))
        _ = try sys("rename", path: image) { rename(image + ".sum.tmp", image + ".sum") }
    }

    /// The sum kept for `image`; nil when it has none (made before sums existed, or not yet).
    public static func stored(for image: String) -> ImageChecksum? {
        (try? FS.readText(image + ".sum")).flatMap { ImageChecksum(text: $0) }
    }
}
