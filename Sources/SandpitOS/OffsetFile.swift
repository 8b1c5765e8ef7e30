import CSandpit
#if canImport(Glibc)
import Glibc
#endif

/// A file written and read at offsets, whose unneeded ranges go back to the
/// filesystem as holes: an exec's output log (`ExecSession`), which keeps
/// the head and a rolling tail of everything the command wrote, each byte
/// at its offset in the whole output, so the middle a budget drops is
/// punched out and the file takes no more disk than what is kept.
public struct OffsetFile: Sendable {
    public let fd: Int32

    public init(fd: Int32) { self.fd = fd }

    /// Creates (or truncates) `path`, readable by the daemon only.
    public static func create(_ path: String) throws(OSError) -> OffsetFile {
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw OSError(call: "open", errno: errno, path: path) }
        return OffsetFile(fd: fd)
    }

    public static func openForReading(_ path: String) -> OffsetFile? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        return fd >= 0 ? OffsetFile(fd: fd) : nil
    }

    /// Writes all of `bytes` at `offset`; false on an error (a full disk).
    public func write(_ bytes: [UInt8], at offset: Int64) -> Bool {
        bytes.withUnsafeBytes { write($0, at: offset) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// `count` bytes at `offset`, or nil when they cannot all be read.
    public func read(at offset: Int64, count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            done += n
        }
        return out
    }

    /// Gives the range's blocks back (a hole; the size stays). Best effort:
    /// a filesystem without hole punching keeps them until the file goes.
    public func release(offset: Int64, length: Int64) {
        _ = sp_punch_hole(fd, offset, length)
    }

    public func close() { _ = Glibc.close(fd) }
}
