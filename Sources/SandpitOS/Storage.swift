#if canImport(Glibc)
import Glibc
#endif
import CSandpit

/// Where sandbox disks, checkpoints and template layers live.
///
/// On these hosts the root ext4 creates a file in 55 µs–1 ms, while a loop
/// image does it in ~30 µs and tmpfs in ~10 µs (`Benchmarks/fs-create.sh`).
/// tmpfs would put sandbox disk usage in RAM and lose it on restart, so the
/// default is a sparse image under the data dir, loop-mounted at
/// `<data>/store`: persistent, fast to create files in, one place whose size
/// bounds all sandboxes together. It is formatted XFS with reflink, so a
/// checkpoint or a fork of a sandbox's disk image is a copy-on-write clone
/// whose cost follows the image's extents, not its data. (Stores made by
/// earlier versions are ext4; they keep working, with full copies.)
public enum StorageMode: String, Sendable {
    case loop   // sparse ext4 image, loop-mounted (default as root)
    case dir    // plain directory on the data dir's filesystem
}

public struct StorageVolume: Sendable {
    public var mode: StorageMode
    public var root: String           // where layers live
    public var image: String?
    /// Whether files on the store can be cloned by reference (FICLONE).
    public var reflink: Bool = false

    /// Makes the storage root ready. For `.loop`, creates the image once
    /// (sparse, `sizeBytes`), formats it, and mounts it unless already mounted.
    public static func prepare(dataDir: String, mode: StorageMode, sizeBytes: Int64) throws -> StorageVolume {
        let root = dataDir + "/store"
        try FS.mkdir(root, mode: 0o711)
        guard mode == .loop else { return probed(StorageVolume(mode: .dir, root: root, image: nil)) }
        let image = dataDir + "/store.img"
        if MountTable.mountPoints().contains(root) {
            return probed(StorageVolume(mode: .loop, root: root, image: image))
        }
        if !FS.exists(image) {
            let tmp = image + ".partial"
            unlink(tmp)
            let fd = try sys("open", path: tmp) { open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
            let rc = ftruncate(fd, off_t(sizeBytes))
            close(fd)
            if rc != 0 { throw OSError(call: "ftruncate", errno: errno, path: tmp) }
            // XFS for reflink clones (checkpoints, forks); its log keeps a
            // checkpoint either fully there or not after a crash.
            try HostCommand.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", tmp])
            _ = try sys("rename", path: image) { rename(tmp, image) }
        }
        // discard: space the store frees goes back to the host's disk.
        try HostCommand.run(["mount", "-o", "loop,noatime,discard", image, root])
        try FS.chmod(root, 0o711)
        return probed(StorageVolume(mode: .loop, root: root, image: image))
    }

    /// Tries a reflink clone on the store and records whether it works.
    static func probed(_ v: StorageVolume) -> StorageVolume {
        var v = v
        let a = v.root + "/.reflink-probe-a", b = v.root + "/.reflink-probe-b"
        defer { unlink(a); unlink(b) }
        let fa = open(a, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600), fb = open(b, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { if fa >= 0 { close(fa) }; if fb >= 0 { close(fb) } }
        if fa >= 0, fb >= 0, write(fa, "x", 1) == 1 { v.reflink = sp_clone_file(fa, fb) == 0 }
        return v
    }

    /// Makes `dst` a copy of `src`: a reflink clone where the store can, else a
    /// sparse copy (data extents only). `dst` must not exist.
    public func copyFile(_ src: String, to dst: String) throws(OSError) {
        let input = FileDescriptor(try sys("open", path: src) { open(src, O_RDONLY | O_CLOEXEC) })
        let output = FileDescriptor(try sys("open", path: dst) { open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) })
        if reflink && sp_clone_file(input.raw, output.raw) == 0 { return }
        _ = try sys("copy", path: dst) { sp_copy_sparse(input.raw, output.raw) }
    }

    /// Unmounts a loop store (detaching the loop device).
    public func release() {
        guard mode == .loop else { return }
        _ = try? HostCommand.run(["umount", root])
    }
}
