#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import SandpitCore

/// Walks a sandbox's writable layer (the overlay upper directory) into a
/// `Manifest`. Cost follows the number of entries in the layer, not its bytes.
public enum ManifestScan {
    public static func scan(_ root: String) throws(OSError) -> Manifest {
        let fd = try sys("open", path: root) { open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        var m = Manifest()
        walk(fd, prefix: "", into: &m)   // walk closes fd
        return m
    }

    private static func walk(_ dirFd: Int32, prefix: String, into m: inout Manifest) {
        guard let dir = fdopendir(dirFd) else { close(dirFd); return }
        defer { closedir(dir) }
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw -> String in
                let b = raw.bindMemory(to: UInt8.self)
                return String(decoding: b.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            var st = stat()
            guard fstatat(dirFd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            let path = prefix.isEmpty ? name : prefix + "/" + name
            let fmt = st.st_mode & S_IFMT
            let kind: FileMeta.Kind
            if sp_is_whiteout(st.st_mode, UInt64(st.st_rdev)) != 0 { kind = .whiteout }
            else if fmt == S_IFREG { kind = .file }
            else if fmt == S_IFDIR { kind = .dir }
            else if fmt == S_IFLNK { kind = .symlink }
            else { kind = .other }
            m.entries[path] = FileMeta(kind: kind, mode: st.st_mode, ino: UInt64(st.st_ino), size: Int64(st.st_size),
                                       mtimeNs: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
                                       ctimeNs: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec))
            if kind == .dir {
                let sub = openat(dirFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if sub >= 0 { walk(sub, prefix: path, into: &m) }
            }
        }
    }
}
