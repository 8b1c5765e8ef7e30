#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import Synchronization

/// Blocking socket helpers for the relays that run on plain threads
/// (the egress proxy and exposed ports).
enum Sock {
    /// Accepts connections until `closed` is set (and the fd shut down),
    /// serving each on a thread of its own; closes the listening fd at the end.
    static func acceptLoop(_ listenFd: Int32, closed: borrowing Atomic<Bool>, _ serve: @escaping @Sendable (Int32) -> Void) {
        defer { close(listenFd) }
        while !closed.load(ordering: .acquiring) {
            let c = sp_accept_cloexec(listenFd)
            if c < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            EngineThread.detach {
                serve(c)
                close(c)
            }
        }
    }

    static func setTimeout(_ fd: Int32, seconds: Int, send: Bool = false) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, send ? SO_SNDTIMEO : SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    /// Copies bytes both ways until both directions have ended.
    static func relay(_ a: Int32, _ b: Int32) {
        var open = [true, true]   // a→b, b→a
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while open[0] || open[1] {
            var fds = [pollfd(fd: open[0] ? a : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: open[1] ? b : -1, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue }; return }
            for (i, (from, to)) in [(a, b), (b, a)].enumerated() where open[i] && fds[i].revents != 0 {
                let n = buf.withUnsafeMutableBytes { read(from, $0.baseAddress!, $0.count) }
                if n > 0 && writeAll(to, Array(buf[0..<n])) { continue }
                if n < 0 && errno == EINTR { continue }
                open[i] = false
                shutdown(to, Int32(SHUT_WR))
                if n != 0 { return }   // an error, not a clean EOF: drop both sides
            }
        }
    }

    /// Reads an HTTP head (up to the blank line): the head without its final
    /// CRLFCRLF, and whatever was read past it. Nil on EOF, error or `limit`.
    static func readHead(_ fd: Int32, limit: Int) -> (head: [UInt8], rest: [UInt8])? {
        var buf: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let end = buf.firstRange(of: [13, 10, 13, 10])?.lowerBound { return (Array(buf[..<end]), Array(buf[(end + 4)...])) }
            guard buf.count < limit else { return nil }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            buf += chunk[0..<n]
        }
    }

    /// A complete plain-text HTTP response, then the connection is done.
    static func reply(_ fd: Int32, _ status: Int, _ message: String, headers: [String] = []) {
        let reasons = [302: "Found", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"]
        let body = message + "\n"
        var head = "HTTP/1.1 \(status) \(reasons[status] ?? "Error")\r\nContent-Type: text/plain; charset=utf-8\r\n"
        for h in headers { head += h + "\r\n" }
        head += "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        _ = writeAll(fd, Array((head + body).utf8))
    }
}
