#if canImport(Glibc)
import Glibc
#endif

/// Where sandbox write layers and template layers live.
///
/// On these hosts the root ext4 creates a file in 55 µs–1 ms, while an ext4
/// image on a loop device does it in ~30 µs and tmpfs in ~10 µs (measured with
/// `Benchmarks/fs-create.sh`). tmpfs would put sandbox disk usage in RAM and
/// lose it on restart, so the default is a sparse ext4 image under the data
/// dir, loop-mounted at `<data>/store`: persistent, fast to create files in,
/// and a single place whose size bounds all sandboxes together.
public enum StorageMode: String, Sendable {
    case loop   // sparse ext4 image, loop-mounted (default as root)
    case dir    // plain directory on the data dir's filesystem
}

public struct StorageVolume: Sendable {
    public var mode: StorageMode
    public var root: String           // where layers live
    public var image: String?

    /// Makes the storage root ready. For `.loop`, creates the image once
    /// (sparse, `sizeBytes`), formats it, and mounts it unless already mounted.
    public static func prepare(dataDir: String, mode: StorageMode, sizeBytes: Int64) throws -> StorageVolume {
        let root = dataDir + "/store"
        try FS.mkdir(root, mode: 0o711)
        guard mode == .loop else { return StorageVolume(mode: .dir, root: root, image: nil) }
        let image = dataDir + "/store.img"
        if MountTable.mountPoints().contains(root) {
            return StorageVolume(mode: .loop, root: root, image: image)
        }
        if !FS.exists(image) {
            let tmp = image + ".partial"
            unlink(tmp)
            let fd = try sys("open", path: tmp) { open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
            let rc = ftruncate(fd, off_t(sizeBytes))
            close(fd)
            if rc != 0 { throw OSError(call: "ftruncate", errno: errno, path: tmp) }
            // No journal: layers are reconciled against the catalog on start,
            // and a journal costs every create. lazy init keeps mkfs fast.
            try HostCommand.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E",
                                 "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", "-m", "0", tmp])
            _ = try sys("rename", path: image) { rename(tmp, image) }
        }
        try HostCommand.run(["mount", "-o", "loop,noatime", image, root])
        try FS.chmod(root, 0o711)
        return StorageVolume(mode: .loop, root: root, image: image)
    }

    /// Unmounts a loop store (detaching the loop device).
    public func release() {
        guard mode == .loop else { return }
        _ = try? HostCommand.run(["umount", root])
    }
}
