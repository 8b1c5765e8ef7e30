#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SandpitCore

/// A failed system call: its name, errno and the object it acted on.
public struct OSError: Error, Sendable, CustomStringConvertible {
    public var call: String
    public var errno: Int32
    public var path: String?

    public init(call: String, errno: Int32, path: String? = nil) {
        self.call = call
        self.errno = errno
        self.path = path
    }

    public var description: String {
        let msg = String(cString: strerror(errno))
        if let path { return "\(call)(\(path)): \(msg)" }
        return "\(call): \(msg)"
    }
}

/// The one place system calls go through: retries EINTR and throws
/// `OSError` carrying the call's name and errno.
@inline(__always)
public func sys<T: FixedWidthInteger>(_ call: String, path: String? = nil, _ body: () -> T) throws(OSError) -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = errno
        if e == EINTR { continue }
        throw OSError(call: call, errno: e, path: path)
    }
}

public enum FS {
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func mkdir(_ path: String, mode: mode_t = 0o755) throws(OSError) {
        if Glibc.mkdir(path, mode) != 0 {
            let e = errno
            if e == EEXIST && isDirectory(path) { return }
            throw OSError(call: "mkdir", errno: e, path: path)
        }
    }

    public static func mkdirs(_ path: String, mode: mode_t = 0o755) throws(OSError) {
        var cur = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            cur += "/" + part
            try mkdir(cur, mode: mode)
        }
    }

    public static func chown(_ path: String, uid: UInt32, gid: UInt32) throws(OSError) {
        _ = try sys("lchown", path: path) { Glibc.lchown(path, uid, gid) }
    }

    public static func chmod(_ path: String, _ mode: mode_t) throws(OSError) {
        _ = try sys("chmod", path: path) { Glibc.chmod(path, mode) }
    }

    public static func symlink(_ target: String, at path: String) throws(OSError) {
        if Glibc.symlink(target, path) != 0 {
            let e = errno
            if e == EEXIST { return }
            throw OSError(call: "symlink", errno: e, path: path)
        }
    }

    public static func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644) throws(OSError) {
        try writeBytes(path, Array(text.utf8), mode: mode)
    }

    /// Writes `data` to `path`, replacing what was there.
    public static func writeBytes(_ path: String, _ data: [UInt8], mode: mode_t = 0o644) throws(OSError) {
        let fd = try sys("open", path: path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        defer { close(fd) }
        var bytes = data
        var off = 0
        while off < bytes.count {
            let n = try sys("write", path: path) { bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + off, $0.count - off) } }
            off += n
        }
    }

    /// True when `path` exists, without following a final symlink.
    public static func isSymlink(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK
    }

    /// Whether both paths name the same inode (hard links of one file).
    public static func sameFile(_ a: String, _ b: String) -> Bool {
        var x = stat(), y = stat()
        return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino
    }

    public static func lexists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func remove(_ path: String) throws(OSError) {
        _ = try sys("unlink", path: path) { unlink(path) }
    }

    public static func readFile(_ path: String, limit: Int = 1 << 20) throws(OSError) -> [UInt8] {
        let fd = try sys("open", path: path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let n = try sys("read", path: path) { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) } }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    /// Space on the filesystem of an open descriptor; `full` when under 1% (or
    /// 1 MiB) of its blocks, or none of its inodes, are left.
    public static func space(_ fd: Int32) -> (totalBytes: Int64, freeBytes: Int64, full: Bool)? {
        var st = statvfs()
        guard fstatvfs(fd, &st) == 0 else { return nil }
        let free = Int64(st.f_bavail) * Int64(st.f_frsize), total = Int64(st.f_blocks) * Int64(st.f_frsize)
        return (total, free, (total > 0 && free < max(1 << 20, total / 100)) || (st.f_files > 0 && st.f_favail == 0))
    }

    /// Blocks allocated under `path` (files, not following symlinks or crossing mounts), in bytes.
    public static func allocatedBytes(_ path: String) -> Int64 {
        var st = stat()
        guard lstat(path, &st) == 0 else { return 0 }
        var n = Int64(st.st_blocks) * 512
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for e in (try? entries(path)) ?? [] { n += allocatedBytes(path + "/" + e) }
        }
        return n
    }

    public static func readText(_ path: String) throws(OSError) -> String {
        String(decoding: try readFile(path), as: UTF8.self)
    }

    /// Removes a tree without following symlinks and without crossing into
    /// other mounts (a mount point below `path` makes this fail with EBUSY).
    public static func removeTree(_ path: String) throws(OSError) {
        var st = stat()
        if lstat(path, &st) != 0 {
            if errno == ENOENT { return }
            throw OSError(call: "lstat", errno: errno, path: path)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            // A file written into it meanwhile (a background checkpoint checksum,
            // say) makes rmdir ENOTEMPTY: empty it again, a few times.
            for attempt in 0..<5 {
                for n in try entries(path) { try removeTree(path + "/" + n) }
                if rmdir(path) == 0 || errno == ENOENT { return }
                if errno != ENOTEMPTY || attempt == 4 { throw OSError(call: "rmdir", errno: errno, path: path) }
            }
        } else {
            _ = try sys("unlink", path: path) { unlink(path) }
        }
    }

    /// Names in a directory (no "." or ".."); empty when it cannot be read.
    public static func listDirectory(_ path: String) -> [String] { (try? entries(path)) ?? [] }

    /// Names of the subdirectories of `path` (not following links), from the
    /// entries' types: no stat per entry, which matters in cgroupfs, where a
    /// group has dozens of files.
    public static func subdirectories(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name == "." || name == ".." { continue }
            let type = e.pointee.d_type
            if type == UInt8(DT_DIR) || (type == UInt8(DT_UNKNOWN) && isDirectory(path + "/" + name)) { names.append(name) }
        }
        return names
    }

    public static func entries(_ path: String) throws(OSError) -> [String] {
        guard let d = opendir(path) else { throw OSError(call: "opendir", errno: errno, path: path) }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// An owned file descriptor, closed on deinit.
public final class FileDescriptor: @unchecked Sendable {
    public private(set) var raw: Int32

    public init(_ raw: Int32) { self.raw = raw }

    public func close() {
        if raw >= 0 { _ = Glibc.close(raw) }
        raw = -1
    }

    deinit { if raw >= 0 { _ = Glibc.close(raw) } }
}

public enum Clock {
    /// Monotonic nanoseconds.
    public static func monotonicNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Wall-clock milliseconds since the epoch.
    public static func nowMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}

/// Plain detached threads, for blocking work kept off Swift's cooperative pool.
public enum OSThread {
    final class Box {
        let body: @Sendable () -> Void
        init(_ b: @escaping @Sendable () -> Void) { body = b }
    }

    /// Runs `body` on a new detached thread (inline if no thread can be made).
    public static func detach(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var tid = pthread_t()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attr, 256 * 1024)
        let rc = pthread_create(&tid, &attr, { p in
            Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().body()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        if rc != 0 { Unmanaged<Box>.fromOpaque(box).takeRetainedValue().body() }
    }
}
