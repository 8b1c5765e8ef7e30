#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import SandpitCore

/// Template layers on the host: directories in overlayfs's own format (a
/// whiteout is a 0/0 character device, an opaque directory carries
/// `trusted.overlay.opaque`), owned by the sandbox id range. Template
/// builds are operator work; these helpers run host tools (tar, cp) on
/// the daemon's side, never inside a sandbox.
public enum LayerFS {
    /// Calls `body` for every entry below `root` (depth first, directories
    /// after their contents), with the parent directory's fd and the raw name.
    /// Symlinks are never followed; names are passed as bytes, not decoded.
    static func walk(_ root: String, _ body: (Int32, UnsafePointer<CChar>, inout stat) throws -> Void) throws {
        let fd = try sys("open", path: root) { open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        try walkFd(fd, body)
    }

    private static func walkFd(_ fd: Int32, _ body: (Int32, UnsafePointer<CChar>, inout stat) throws -> Void) throws {
        guard let dir = fdopendir(fd) else { close(fd); throw OSError(call: "fdopendir", errno: errno) }
        defer { closedir(dir) }
        while let e = readdir(dir) {
            try withUnsafePointer(to: e.pointee.d_name) { p in
                try p.withMemoryRebound(to: CChar.self, capacity: 256) { name in
                    if strcmp(name, ".") == 0 || strcmp(name, "..") == 0 { return }
                    var st = stat()
                    guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
                    if (st.st_mode & S_IFMT) == S_IFDIR {
                        let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                        if sub >= 0 { try walkFd(sub, body) }
                    }
                    try body(fd, name, &st)
                }
            }
        }
    }

    /// Bytes a tree occupies (allocated blocks; hard links counted once).
    public static func treeBytes(_ root: String) -> Int64 {
        var seen = Set<UInt64>()
        var total: Int64 = 0
        try? walk(root) { _, _, st in
            if st.st_nlink > 1 && (st.st_mode & S_IFMT) != S_IFDIR {
                guard seen.insert(UInt64(st.st_ino)).inserted else { return }
            }
            total += Int64(st.st_blocks) * 512
        }
        return total
    }

    /// Shifts ownership from image ids (0…count-1) to host ids; ids out of
    /// range become the range's nobody (65534).
    public static func shiftOwnership(_ root: String, ids: IDMapping) throws {
        func shift(_ v: UInt32) -> UInt32 { ids.hostID(v < ids.count ? v : 65_534) }
        try walk(root) { dirFd, name, st in
            if fchownat(dirFd, name, shift(st.st_uid), shift(st.st_gid), AT_SYMLINK_NOFOLLOW) != 0 {
                throw OSError(call: "fchownat", errno: errno, path: String(cString: name))
            }
            // chown clears set-id bits on files; put them back.
            if (st.st_mode & S_IFMT) == S_IFREG, st.st_mode & (S_ISUID | S_ISGID) != 0 {
                _ = fchmodat(dirFd, name, st.st_mode & 0o7777, 0)
            }
        }
        var st = stat()
        if lstat(root, &st) == 0 { _ = lchown(root, shift(st.st_uid), shift(st.st_gid)) }
    }

    /// Gives every entry of a tree (and the tree's root) one owner.
    public static func chownTree(_ root: String, uid: UInt32, gid: UInt32) throws {
        var st = stat()
        if lstat(root, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            try walk(root) { dirFd, name, st in
                if fchownat(dirFd, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0 {
                    throw OSError(call: "fchownat", errno: errno, path: String(cString: name))
                }
                if (st.st_mode & S_IFMT) == S_IFREG, st.st_mode & (S_ISUID | S_ISGID) != 0 { _ = fchmodat(dirFd, name, st.st_mode & 0o7777, 0) }
            }
        }
        _ = try sys("lchown", path: root) { lchown(root, uid, gid) }
    }

    /// Turns OCI/Docker whiteouts (`.wh.NAME` files, `.wh..wh..opq` markers)
    /// into overlayfs ones, so the layer can sit directly in an overlay stack.
    public static func convertWhiteouts(_ root: String) throws {
        try walk(root) { dirFd, name, st in
            guard strncmp(name, ".wh.", 4) == 0 else { return }
            let target = name + 4
            if strcmp(target, ".wh..opq") == 0 {
                let dir = openat(dirFd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                defer { close(dir) }
                // Rootless overlays read user.overlay.* (userxattr): see DetachedMount.overlay.
                guard sp_mark_opaque(dir, Rootless.active ? 1 : 0) == 0 else {
                    throw OSError(call: Rootless.active ? "fsetxattr(user.overlay.opaque)" : "fsetxattr(trusted.overlay.opaque)", errno: errno)
                }
            } else {
                _ = unlinkat(dirFd, target, AT_REMOVEDIR)
                _ = unlinkat(dirFd, target, 0)
                guard mknodat(dirFd, target, S_IFCHR | 0o000, 0) == 0 else {
                    throw OSError(call: "mknod(whiteout)", errno: errno, path: String(cString: target))
                }
                _ = fchownat(dirFd, target, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW)
            }
            _ = unlinkat(dirFd, name, 0)
        }
    }

    /// Unpacks a tar archive (plain, gzip, xz or zstd; GNU tar tells them
    /// apart) into `dir`, keeping numeric owners, modes and xattrs. GNU tar
    /// refuses members outside `dir` and delays links that could redirect
    /// later members.
    /// An archive tar refuses (a member outside `dir`, a hostile link, a
    /// corrupt stream) fails the build with `build_failed` and tar's words,
    /// which name the entry.
    public static func extract(_ archive: String, into dir: String) throws {
        try tar(["tar", "--extract", "--file", archive, "--directory", dir, "--numeric-owner", "--same-permissions",
                 "--xattrs", "--xattrs-include=*", "--no-overwrite-dir", "--delay-directory-restore"], archive)
    }

    /// The member names of an archive (for telling image archives from rootfs tarballs).
    public static func members(_ archive: String) throws -> [String] {
        try tar(["tar", "--list", "--file", archive], archive).split(separator: "\n").map(String.init)
    }

    @discardableResult
    static func tar(_ argv: [String], _ archive: String) throws -> String {
        do { return try HostCommand.run(argv) } catch let f as HostCommand.Failure {
            let said = f.output.split(separator: "\n").filter { !$0.contains("Exiting with failure status") }.prefix(5).joined(separator: "; ")
            throw SandpitError(.buildFailed, "cannot unpack \(archive) safely: \(said.isEmpty ? "tar exited with \(f.status)" : said)",
                               details: ["path": .string(archive)])
        }
    }

    /// The sha256 of a file's contents (hex), via coreutils.
    public static func fileDigest(_ path: String) throws -> String {
        let out = try HostCommand.run(["sha256sum", "--binary", path])
        return String(out.prefix(64))
    }

    /// A digest of a build-context path: names, modes, link targets and
    /// contents, independent of timestamps and owners.
    public static func contextDigest(_ dir: String, paths: [String]) throws -> String {
        let out = try HostCommand.run(["sh", "-c",
            "tar --create --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime " +
            "--directory \"$0\" -f - -- \"$@\" | sha256sum", dir] + paths)
        return String(out.prefix(64))
    }

    /// Copies `src` to `dst` with everything a layer needs (owners, modes,
    /// xattrs, device nodes, hard links, sparse files). `byReference`: files
    /// are cloned (reflinks) where the filesystem can, copied elsewhere.
    public static func copyTree(_ src: String, to dst: String, preserveOwners: Bool = true, byReference: Bool = false) throws {
        var argv = ["cp", "--archive", byReference ? "--reflink=auto" : "--sparse=always", "--no-target-directory"]
        if !preserveOwners { argv.append("--no-preserve=ownership") }
        try HostCommand.run(argv + [src, dst])
    }
}
