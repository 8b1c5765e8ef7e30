#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import SandpitCore

/// One directory entry as `fs.list` and `fs.stat` report it. Paths are raw bytes:
/// Linux file names need not be UTF-8.
public struct FileEntry: Sendable {
    public var path: [UInt8]
    public var type: String          // file, dir, symlink, fifo, socket, char, block
    public var size: Int64
    public var mode: UInt32
    public var mtimeMs: Int64
    public var target: [UInt8]?
}

/// File operations inside a sandbox's root, from the daemon's side. Every
/// path is resolved by the kernel relative to `root` (`openat2` with
/// RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): `..`, absolute and relative
/// symlinks, symlinks in the middle of a path and /proc magic links cannot
/// leave it, even if the sandbox swaps a directory for a symlink meanwhile.
/// Only regular files are opened for data; FIFOs, devices and sockets are
/// refused. Callers run these on a thread whose filesystem ids are the
/// sandbox user's (`FileCredentials`), so permissions are the sandbox's.
public enum SandboxFiles {
    public static let readLimit = 16 << 20

    static func c(_ p: [UInt8]) -> [CChar] { p.map { CChar(bitPattern: $0) } + [0] }

    public static func fail(_ call: String, _ path: [UInt8], _ e: Int32 = errno) -> SandpitError {
        let shown = String(decoding: path, as: UTF8.self)
        let msg = String(cString: strerror(e))
        let details: [String: JSONValue] = ["path": .string(shown), "errno": .string(Self.errnoName(e))]
        switch e {
        case ENOENT: return SandpitError(.notFound, "\(shown): no such file or directory", details: details)
        case EACCES, EPERM, EROFS: return SandpitError(.permissionDenied, "\(shown): \(msg) (as the sandbox's user)", details: details)
        case EEXIST, ENOTEMPTY, EBUSY: return SandpitError(.conflict, "\(shown): \(msg)", details: details)
        case ENOSPC, EDQUOT, EFBIG: return SandpitError(.limitExceeded, "\(shown): \(msg) (the sandbox's disk limit)", details: details)
        case EXDEV: return SandpitError(.permissionDenied, "\(shown): the path leaves the sandbox's root", details: details)
        case ELOOP: return SandpitError(.invalidParams, "\(shown): too many symlinks, or a /proc magic link", details: details.merging(["field": "path"]) { a, _ in a })
        default: return SandpitError(.invalidParams, "\(call) \(shown): \(msg)", details: details.merging(["field": "path"]) { a, _ in a })
        }
    }

    static func errnoName(_ e: Int32) -> String {
        let names: [Int32: String] = [ENOENT: "ENOENT", EACCES: "EACCES", EPERM: "EPERM", EEXIST: "EEXIST", ENOTDIR: "ENOTDIR",
                                      EISDIR: "EISDIR", ENOTEMPTY: "ENOTEMPTY", ELOOP: "ELOOP", EXDEV: "EXDEV", ENOSPC: "ENOSPC",
                                      EROFS: "EROFS", EINVAL: "EINVAL", EBUSY: "EBUSY", EDQUOT: "EDQUOT", ENXIO: "ENXIO"]
        return names[e] ?? "E\(e)"
    }

    /// Splits into parent and final name; the name is never empty, "." or "..".
    static func split(_ path: [UInt8]) throws(SandpitError) -> (parent: [UInt8], name: [UInt8]) {
        var p = path
        while p.count > 1 && p.last == UInt8(ascii: "/") { p.removeLast() }
        let slash = p.lastIndex(of: UInt8(ascii: "/"))
        let name = slash.map { Array(p[($0 + 1)...]) } ?? p
        let parent = slash.map { $0 == 0 ? [UInt8(ascii: "/")] : Array(p[..<$0]) } ?? [UInt8(ascii: ".")]
        guard !name.isEmpty, name != [46], name != [46, 46] else {
            throw SandpitError(.invalidParams, "\(String(decoding: path, as: UTF8.self)) does not name a file", details: ["field": "path"])
        }
        return (parent, name)
    }

    static func open(_ root: Int32, _ path: [UInt8], _ flags: Int32, _ mode: UInt32 = 0) throws(SandpitError) -> Int32 {
        let fd = c(path).withUnsafeBufferPointer { sp_open_in_root(root, $0.baseAddress!, flags, mode) }
        if fd < 0 { throw fail("open", path) }
        return fd
    }

    /// A directory entry's name, NUL-terminated, for the `*at()` calls.
    static func entryName(_ e: UnsafeMutablePointer<dirent>) -> [CChar] {
        withUnsafeBytes(of: e.pointee.d_name) { raw in Array(raw.bindMemory(to: CChar.self).prefix { $0 != 0 }) + [0] }
    }

    static func parentFd(_ root: Int32, _ path: [UInt8]) throws(SandpitError) -> (Int32, [CChar]) {
        let (parent, name) = try split(path)
        let fd = try open(root, parent, sp_o_path() | O_DIRECTORY)
        return (fd, c(name))
    }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "file"
        case S_IFDIR: "dir"
        case S_IFLNK: "symlink"
        case S_IFIFO: "fifo"
        case S_IFSOCK: "socket"
        case S_IFCHR: "char"
        case S_IFBLK: "block"
        default: "unknown"
        }
    }

    static func entry(_ path: [UInt8], _ st: Glibc.stat, dirFd: Int32, name: [CChar]) -> FileEntry {
        var target: [UInt8]?
        if (st.st_mode & S_IFMT) == S_IFLNK {
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlinkat(dirFd, name, &buf, buf.count)
            if n >= 0 { target = buf[0..<n].map { UInt8(bitPattern: $0) } }
        }
        return FileEntry(path: path, type: kind(st.st_mode), size: Int64(st.st_size), mode: UInt32(st.st_mode & 0o7777),
                         mtimeMs: Int64(st.st_mtim.tv_sec) * 1000 + Int64(st.st_mtim.tv_nsec) / 1_000_000, target: target)
    }

    /// Opens a regular file for reading (the final symlink followed, inside the root).
    public static func openRegular(_ root: Int32, _ path: [UInt8]) throws(SandpitError) -> Int32 {
        let p = try open(root, path, sp_o_path())
        defer { close(p) }
        var st = Glibc.stat()
        guard fstat(p, &st) == 0 else { throw fail("stat", path) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw SandpitError(.invalidParams, "\(String(decoding: path, as: UTF8.self)) is a \(kind(st.st_mode)), not a regular file",
                               details: ["field": "path", "type": .string(kind(st.st_mode))])
        }
        // Reopen the very inode we checked (no window for a swap).
        let fd = Glibc.open("/proc/self/fd/\(p)", O_RDONLY | O_CLOEXEC | O_NOCTTY)
        if fd < 0 { throw fail("open", path) }
        return fd
    }

    public static func read(_ root: Int32, _ path: [UInt8], offset: Int64, length: Int?) throws(SandpitError) -> (data: [UInt8], size: Int64, eof: Bool) {
        let fd = try openRegular(root, path)
        defer { close(fd) }
        var st = Glibc.stat()
        _ = fstat(fd, &st)
        let size = Int64(st.st_size)
        let want = min(length ?? readLimit, readLimit, Int(max(0, size - offset)))
        var buf = [UInt8](repeating: 0, count: want)
        var got = 0
        while got < want {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, want - got, off_t(offset) + off_t(got)) }
            if n < 0 { if errno == EINTR { continue }; throw fail("read", path) }
            if n == 0 { break }
            got += n
        }
        buf.removeLast(want - got)
        return (buf, size, offset + Int64(got) >= size)
    }

    /// Creates missing parent directories (mode 0755, owned by the caller's fs ids).
    public static func makeParents(_ root: Int32, _ path: [UInt8]) throws(SandpitError) {
        let (parent, _) = try split(path)
        try mkdir(root, parent, recursive: true)
    }

    /// Opens `path` for writing, creating it (through a final symlink, which
    /// the kernel keeps inside the root) if missing. Whatever is there must
    /// turn out to be a regular file: the open is non-blocking (a FIFO
    /// without a reader fails, one with a reader is refused after `fstat`)
    /// and nothing is written before the check.
    public static func openForWrite(_ root: Int32, _ path: [UInt8], mode: UInt32?, append: Bool) throws(SandpitError) -> Int32 {
        let fd = try open(root, path, O_WRONLY | O_CREAT | O_NONBLOCK | O_NOCTTY, mode ?? 0o644)
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw fail("stat", path) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw SandpitError(.invalidParams, "\(String(decoding: path, as: UTF8.self)) is a \(kind(st.st_mode)); only regular files are written",
                               details: ["field": "path", "type": .string(kind(st.st_mode))])
        }
        _ = fcntl(fd, F_SETFL, append ? O_APPEND : 0)
        if !append && ftruncate(fd, 0) != 0 { close(fd); throw fail("truncate", path) }
        if let m = mode { _ = fchmod(fd, mode_t(m & 0o7777)) }
        return fd
    }

    public static func writeAll(_ fd: Int32, _ data: [UInt8], at offset: Int64? = nil, path: [UInt8]) throws(SandpitError) {
        var off = 0
        while off < data.count {
            let n = data.withUnsafeBytes { b in
                offset.map { pwrite(fd, b.baseAddress! + off, data.count - off, off_t($0) + off_t(off)) } ?? Glibc.write(fd, b.baseAddress! + off, data.count - off)
            }
            if n < 0 { if errno == EINTR { continue }; throw fail("write", path) }
            off += n
        }
    }

    public static func write(_ root: Int32, _ path: [UInt8], _ data: [UInt8], mode: UInt32?, append: Bool) throws(SandpitError) -> Int64 {
        try makeParents(root, path)
        let fd = try openForWrite(root, path, mode: mode, append: append)
        defer { close(fd) }
        try writeAll(fd, data, path: path)
        var st = Glibc.stat()
        _ = fstat(fd, &st)
        return Int64(st.st_size)
    }

    public static func stat(_ root: Int32, _ path: [UInt8]) throws(SandpitError) -> FileEntry {
        if path == [UInt8(ascii: "/")] {
            var st = Glibc.stat()
            guard fstat(root, &st) == 0 else { throw fail("stat", path) }
            return entry(path, st, dirFd: root, name: [0])
        }
        let (dir, name) = try parentFd(root, path)
        defer { close(dir) }
        var st = Glibc.stat()
        guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw fail("stat", path) }
        return entry(path, st, dirFd: dir, name: name)
    }

    /// Entries below `path` (one level, or all with `recursive`), sorted by
    /// path; at most `cap` are collected (the caller pages through them).
    public static func list(_ root: Int32, _ path: [UInt8], recursive: Bool, cap: Int) throws(SandpitError) -> (entries: [FileEntry], complete: Bool) {
        let fd = try open(root, path, O_RDONLY | O_DIRECTORY)
        var out: [FileEntry] = []
        var complete = true
        let base = path.last == UInt8(ascii: "/") ? path : path + [UInt8(ascii: "/")]
        func walk(_ dirFd: Int32, _ prefix: [UInt8]) {
            guard let d = fdopendir(dirFd) else { close(dirFd); return }
            defer { closedir(d) }
            var subdirs: [([CChar], [UInt8])] = []
            while let e = readdir(d) {
                let name = entryName(e)
                if name == [46, 0] || name == [46, 46, 0] { continue }
                if out.count >= cap { complete = false; return }
                var st = Glibc.stat()
                guard fstatat(dirFd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
                let p = prefix + name.dropLast().map { UInt8(bitPattern: $0) }
                out.append(entry(p, st, dirFd: dirFd, name: name))
                if recursive && (st.st_mode & S_IFMT) == S_IFDIR { subdirs.append((name, p)) }
            }
            for (name, p) in subdirs {
                let sub = openat(dirFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if sub >= 0 { walk(sub, p + [UInt8(ascii: "/")]) }
                if out.count >= cap { complete = false; return }
            }
        }
        walk(fd, base)
        out.sort { $0.path.lexicographicallyPrecedes($1.path) }
        return (out, complete)
    }

    public static func mkdir(_ root: Int32, _ path: [UInt8], recursive: Bool, mode: UInt32 = 0o755) throws(SandpitError) {
        if recursive {
            if let fd = try? open(root, path, sp_o_path() | O_DIRECTORY) { close(fd); return }
            var prefix: [UInt8] = path.first == UInt8(ascii: "/") ? [UInt8(ascii: "/")] : []
            for comp in path.split(separator: UInt8(ascii: "/")) {
                prefix += comp
                let (dir, name) = try parentFd(root, prefix)
                let rc = Glibc.mkdirat(dir, name, mode_t(mode))
                let e = errno
                close(dir)
                if rc != 0 && e != EEXIST { throw fail("mkdir", prefix, e) }
                prefix.append(UInt8(ascii: "/"))
            }
            // The last component must be a directory now (not a file or a dangling link).
            let fd = try open(root, path, sp_o_path() | O_DIRECTORY)
            close(fd)
            return
        }
        let (dir, name) = try parentFd(root, path)
        defer { close(dir) }
        if Glibc.mkdirat(dir, name, mode_t(mode)) != 0 { throw fail("mkdir", path) }
    }

    public static func remove(_ root: Int32, _ path: [UInt8], recursive: Bool) throws(SandpitError) {
        guard path != [UInt8(ascii: "/")] else { throw SandpitError(.invalidParams, "refusing to remove /", details: ["field": "path"]) }
        let (dir, name) = try parentFd(root, path)
        defer { close(dir) }
        var st = Glibc.stat()
        guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw fail("stat", path) }
        if (st.st_mode & S_IFMT) != S_IFDIR {
            if unlinkat(dir, name, 0) != 0 { throw fail("unlink", path) }
            return
        }
        if recursive {
            let sub = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard sub >= 0 else { throw fail("open", path) }
            try clear(sub, path)
        }
        if unlinkat(dir, name, AT_REMOVEDIR) != 0 { throw fail("rmdir", path) }
    }

    /// Empties a directory (closes `fd`), never following symlinks.
    static func clear(_ fd: Int32, _ path: [UInt8]) throws(SandpitError) {
        guard let d = fdopendir(fd) else { close(fd); throw fail("opendir", path) }
        defer { closedir(d) }
        var names: [[CChar]] = []
        while let e = readdir(d) {
            let name = entryName(e)
            if name != [46, 0] && name != [46, 46, 0] { names.append(name) }
        }
        for name in names {
            var st = Glibc.stat()
            guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            let child = path + [UInt8(ascii: "/")] + name.dropLast().map { UInt8(bitPattern: $0) }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard sub >= 0 else { throw fail("open", child) }
                try clear(sub, child)
                if unlinkat(fd, name, AT_REMOVEDIR) != 0 { throw fail("rmdir", child) }
            } else if unlinkat(fd, name, 0) != 0 { throw fail("unlink", child) }
        }
    }

    public static func rename(_ root: Int32, _ from: [UInt8], _ to: [UInt8]) throws(SandpitError) {
        let (a, an) = try parentFd(root, from)
        defer { close(a) }
        let (b, bn) = try parentFd(root, to)
        defer { close(b) }
        if renameat(a, an, b, bn) != 0 { throw fail("rename", from) }
    }

    /// A fresh, exclusively created temporary file next to `path` (for
    /// uploads and batch writes, renamed over `path` when complete).
    public static func createTemp(_ root: Int32, near path: [UInt8], tag: String, mode: UInt32?) throws(SandpitError) -> (fd: Int32, path: [UInt8]) {
        let (parent, name) = try split(path)
        let tmp = parent + (parent.last == UInt8(ascii: "/") ? [] : [UInt8(ascii: "/")]) + Array(".".utf8) + name + Array(".sandpit-\(tag)".utf8)
        let fd = c(tmp).withUnsafeBufferPointer {
            sp_open_in_root(root, $0.baseAddress!, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW, mode ?? 0o644)
        }
        if fd < 0 { throw fail("create", tmp) }
        if let m = mode { _ = fchmod(fd, mode_t(m & 0o7777)) }
        return (fd, tmp)
    }

    public static func unlink(_ root: Int32, _ path: [UInt8]) {
        guard let (dir, name) = try? parentFd(root, path) else { return }
        _ = unlinkat(dir, name, 0)
        close(dir)
    }
}

/// Runs file work with a sandbox user's filesystem ids on the current
/// (dedicated) thread, then switches back.
public enum FileCredentials {
    public static func with<T>(uid: UInt32, gid: UInt32, _ body: () throws -> T) rethrows -> T {
        _ = sp_set_fsids(uid, gid)
        defer { _ = sp_set_fsids(0, 0) }
        return try body()
    }
}
