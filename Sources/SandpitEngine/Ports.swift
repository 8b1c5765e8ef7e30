#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import Dispatch
import Logging
import SandpitCore
import SandpitOS
import Synchronization

/// A sandbox port made reachable from the host (`port.expose`).
public struct Exposure: Sendable {
    public var exposeId: String
    public var sandboxId: String
    public var port: Int
    /// `tcp` (a loopback port on the host) or `unix` (a socket file).
    public var on: String
    public var hostPort: Int?
    public var socketPath: String?
    public var token: String?

    /// What a client connects to: `http://127.0.0.1:P/` or the socket path.
    public var url: String {
        if let p = hostPort { return "http://127.0.0.1:\(p)/" }
        return "unix:" + (socketPath ?? "")
    }

    public var json: JSONValue {
        var o: JSONObject = ["exposeId": .string(exposeId), "sandboxId": .string(sandboxId), "port": .int(Int64(port)),
                             "on": .string(on), "url": .string(url), "tokenRequired": .bool(token != nil)]
        if let p = hostPort { o["hostPort"] = .int(Int64(p)) }
        if let s = socketPath { o["socketPath"] = .string(s) }
        if let t = token { o["token"] = .string(t) }
        return .object(o)
    }
}

/// A port opened or closed inside a sandbox (`port.opened` / `port.closed`).
public struct PortEvent: Sendable {
    public var sandboxId: String
    public var owner: Int64
    public var port: ListeningPort
    public var opened: Bool
}

/// The host side of one exposure: a listening socket served by a thread,
/// one thread per connection relaying bytes to the sandbox's loopback.
///
/// The sandbox keeps only its loopback interface: each accepted connection
/// gets a fresh socket created in the sandbox's network namespace
/// (`sp_socket_in_netns`) and connected to 127.0.0.1 (or ::1) there.
final class PortExposure: Sendable {
    let info: Exposure
    let listenFd: Int32
    let pid: Int32
    let closed = Atomic<Bool>(false)
    /// Resumes the sandbox if it is paused (a connection is activity).
    let wake: @Sendable () -> Void

    static let headLimit = 64 << 10
    static let maxPerSandbox = 16

    init(info: Exposure, listenFd: Int32, pid: Int32, wake: @escaping @Sendable () -> Void) {
        self.info = info
        self.listenFd = listenFd
        self.pid = pid
        self.wake = wake
    }

    func start() { EngineThread.detach { Sock.acceptLoop(self.listenFd, closed: self.closed) { self.serve($0) } } }

    /// Stops accepting and removes the socket file; open connections end when either side closes.
    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(listenFd, Int32(SHUT_RDWR))
        if let p = info.socketPath { unlink(p) }
    }

    func serve(_ client: Int32) {
        var first: [UInt8] = []
        if let token = info.token {
            Sock.setTimeout(client, seconds: 30)
            guard let (head, rest) = Sock.readHead(client, limit: Self.headLimit),
                  let req = HTTPHead(head) else {
                Sock.reply(client, 400, "sandpit: this port needs a token, so it speaks HTTP; expose it with token:false for raw TCP")
                return
            }
            switch req.authorize(token) {
            case .denied:
                Sock.reply(client, 401, "sandpit: this port needs its token: send `Authorization: Bearer <token>`, `X-Sandpit-Token: <token>`, or ?sandpit_token=<token>",
                           headers: ["WWW-Authenticate: Bearer realm=\"sandpit\""])
                return
            case .redirect(let location):
                // A browser followed a link with the token: keep it in a cookie and drop it from the URL.
                Sock.reply(client, 302, "authorized", headers: ["Location: \(location)",
                                                               "Set-Cookie: sandpit_token=\(token); Path=/; HttpOnly; SameSite=Strict"])
                return
            case .allowed(let forward):
                first = forward + [13, 10, 13, 10] + rest
            }
            Sock.setTimeout(client, seconds: 0)
        }
        wake()
        let upstream: Int32
        switch Self.connect(pid: pid, port: info.port, timeoutSec: 10) {
        case .success(let fd): upstream = fd
        case .failure(let why):
            if info.token != nil { Sock.reply(client, 502, "sandpit: nothing answers on port \(info.port) in sandbox \(info.sandboxId): \(why)") }
            return
        }
        defer { Glibc.close(upstream) }
        if !first.isEmpty && !Sock.writeAll(upstream, first) { return }
        Sock.relay(client, upstream)
    }

    enum ConnectResult { case success(Int32), failure(String) }

    /// Connects to `port` on the loopback of the sandbox whose agent is `pid`:
    /// 127.0.0.1 first, then ::1. Blocking (the socket is made in the
    /// sandbox's network namespace by `sp_socket_in_netns`).
    static func connect(pid: Int32, port: Int, timeoutSec: Int) -> ConnectResult {
        let nsPath = "/proc/\(pid)/ns/net"
        let ns = open(nsPath, O_RDONLY | O_CLOEXEC)
        guard ns >= 0 else { return .failure("the sandbox has stopped") }
        defer { Glibc.close(ns) }
        var last = "connection refused"
        for family in [AF_INET, AF_INET6] {
            let fd = sp_socket_in_netns(ns, family)
            guard fd >= 0 else { return .failure("cannot make a socket in the sandbox: \(String(cString: strerror(errno)))") }
            Sock.setTimeout(fd, seconds: timeoutSec, send: true)
            let rc: Int32
            if family == AF_INET {
                var a = sockaddr_in()
                a.sin_family = sa_family_t(AF_INET)
                a.sin_port = UInt16(port).bigEndian
                a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
                rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            } else {
                var a = sockaddr_in6()
                a.sin6_family = sa_family_t(AF_INET6)
                a.sin6_port = UInt16(port).bigEndian
                withUnsafeMutableBytes(of: &a.sin6_addr) { $0[15] = 1 }
                rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
            }
            if rc == 0 {
                Sock.setTimeout(fd, seconds: 0, send: true)
                return .success(fd)
            }
            last = String(cString: strerror(errno)).lowercased()
            Glibc.close(fd)
        }
        return .failure(last)
    }
}

/// The request line and headers of the first HTTP request on an exposed connection.
struct HTTPHead {
    var method: String
    var target: String
    var version: String
    var headers: [(name: String, value: String)]

    init?(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        guard !lines.isEmpty else { return nil }
        let first = lines.removeFirst().split(separator: " ")
        guard first.count == 3, first[2].hasPrefix("HTTP/1."), !first[0].isEmpty, first[0].allSatisfy({ $0.isLetter }) else { return nil }
        method = String(first[0])
        target = String(first[1])
        version = String(first[2])
        headers = lines.compactMap { l in
            guard let colon = l.firstIndex(of: ":") else { return nil }
            return (String(l[..<colon]), l[l.index(after: colon)...].trimmingSpaces)
        }
    }

    enum Decision { case allowed([UInt8]), redirect(String), denied }

    /// Checks the token (header, cookie or query parameter). The token is
    /// removed from what is forwarded when it came in our own header.
    func authorize(_ token: String) -> Decision {
        var ok = false
        var kept: [(name: String, value: String)] = []
        for h in headers {
            let n = h.name.lowercased()
            if n == "x-sandpit-token" {
                ok = ok || Identifier.secretsEqual(h.value, token)
                continue
            }
            if n == "authorization", h.value.hasPrefix("Bearer "), Identifier.secretsEqual(String(h.value.dropFirst(7)), token) {
                ok = true
                continue
            }
            if n == "cookie" {
                for c in h.value.split(separator: ";") {
                    let kv = c.trimmingSpaces
                    if kv.hasPrefix("sandpit_token="), Identifier.secretsEqual(String(kv.dropFirst(14)), token) { ok = true }
                }
            }
            kept.append(h)
        }
        if !ok, let (stripped, value) = Self.queryToken(target), Identifier.secretsEqual(value, token) {
            if method == "GET" || method == "HEAD" { return .redirect(stripped) }
            ok = true
        }
        guard ok else { return .denied }
        var out = "\(method) \(target) \(version)"
        for h in kept { out += "\r\n\(h.name):\(h.value.isEmpty ? "" : " " + h.value)" }
        return .allowed(Array(out.utf8))
    }

    /// The target without its `sandpit_token` parameter, and the parameter's value.
    static func queryToken(_ target: String) -> (String, String)? {
        guard let q = target.firstIndex(of: "?") else { return nil }
        let path = String(target[..<q])
        var value: String?
        var rest: [Substring] = []
        for part in target[target.index(after: q)...].split(separator: "&") {
            if part.hasPrefix("sandpit_token=") { value = String(part.dropFirst(14)) } else { rest.append(part) }
        }
        guard let v = value else { return nil }
        return (rest.isEmpty ? path : path + "?" + rest.joined(separator: "&"), v)
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

extension Engine {
    /// TCP ports that processes inside a live sandbox listen on. A paused
    /// sandbox's ports are listed without waking it; a hibernated or stopped
    /// one has none.
    public func ports(_ id: String, caller: Caller) async throws -> [ListeningPort] {
        guard let rt = try runtime(id, caller: caller), !rt.hasExited else {
            _ = try await sandbox(id, caller: caller)
            return []
        }
        return Self.listening(pid: rt.spawned.pid)
    }

    static func listening(pid: Int32) -> [ListeningPort] {
        var seen = Set<ListeningPort>()
        var out: [ListeningPort] = []
        for fam in ["tcp", "tcp6"] {
            let text = (try? FS.readText("/proc/\(pid)/net/\(fam)")) ?? ""
            for p in ListeningPort.parse(text, family: fam) where seen.insert(p).inserted { out.append(p) }
        }
        return out.sorted { ($0.port, $0.family) < ($1.port, $1.family) }
    }

    /// Waits until `port` accepts connections inside the sandbox (and, with
    /// `httpPath`, answers an HTTP GET with a status below 500). Wakes a
    /// paused sandbox. Throws `timeout` saying what it last saw.
    public func waitPort(_ id: String, port: Int, timeoutMs: Int, httpPath: String?, caller: Caller) async throws -> (status: Int?, waitedMs: Int) {
        _ = try await wake(id, caller: caller)
        let t0 = Clock.monotonicNs()
        var last = "nothing listens on port \(port)"
        while true {
            guard let rt = try runtime(id, caller: caller), !rt.hasExited else {
                throw SandpitError(.invalidState, "sandbox \(id) stopped while waiting for port \(port)")
            }
            let pid = rt.spawned.pid
            let elapsed = Int((Clock.monotonicNs() - t0) / 1_000_000)
            let probeSec = max(1, min(5, (timeoutMs - elapsed) / 1000))
            let probe = try await EngineThread.run { () -> (Int?, String?) in
                switch PortExposure.connect(pid: pid, port: port, timeoutSec: probeSec) {
                case .failure(let why): return (nil, why)
                case .success(let fd):
                    defer { close(fd) }
                    guard let path = httpPath else { return (0, nil) }
                    return Self.httpStatus(fd, port: port, path: path, timeoutSec: probeSec)
                }
            }
            if let status = probe.0, probe.1 == nil {
                return (httpPath == nil ? nil : status, Int((Clock.monotonicNs() - t0) / 1_000_000))
            }
            last = probe.1 ?? last
            if Int((Clock.monotonicNs() - t0) / 1_000_000) >= timeoutMs {
                throw SandpitError(.timeout, "port \(port) in sandbox \(id) was not ready after \(timeoutMs) ms (last: \(last))",
                                   details: ["port": .int(Int64(port)), "lastSeen": .string(last)])
            }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
    }

    /// Sends `GET path` and reads the status line: (status, nil) when below 500, else (nil, what was seen).
    static func httpStatus(_ fd: Int32, port: Int, path: String, timeoutSec: Int) -> (Int?, String?) {
        Sock.setTimeout(fd, seconds: timeoutSec)
        guard Sock.writeAll(fd, Array("GET \(path) HTTP/1.1\r\nHost: localhost:\(port)\r\nUser-Agent: sandpit-port-wait\r\nConnection: close\r\n\r\n".utf8)) else {
            return (nil, "the connection closed before the request was sent")
        }
        var buf = [UInt8](repeating: 0, count: 1024)
        var got: [UInt8] = []
        while got.count < 1024, !got.contains(10) {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += buf[0..<n]
        }
        let line = String(decoding: got.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            return (nil, got.isEmpty ? "connected, but no HTTP response" : "not an HTTP response: \(line.prefix(80))")
        }
        return status < 500 ? (status, nil) : (nil, "HTTP \(status)")
    }

    /// Makes a sandbox port reachable from the host. The exposure lasts until
    /// `unexpose` or until the sandbox stops, hibernates or is deleted.
    public func expose(_ id: String, port: Int, on: String, token: Bool, hostPort: Int?, caller: Caller) async throws -> Exposure {
        _ = try await wake(id, caller: caller)
        guard let rt = try runtime(id, caller: caller), !rt.hasExited else {
            throw SandpitError(.invalidState, "sandbox \(id) is not running")
        }
        guard rt.exposures.withLock({ $0.count }) < PortExposure.maxPerSandbox else {
            throw SandpitError(.limitExceeded, "sandbox \(id) already has \(PortExposure.maxPerSandbox) exposed ports")
        }
        // A short id: it names a Unix socket under the data dir (108-byte paths), and
        // it is no secret (the token is; the socket is the caller's own, mode 0600).
        var info = Exposure(exposeId: Identifier.make("px", length: 12), sandboxId: id, port: port, on: on, token: token ? Identifier.secret() : nil)
        let fd: Int32
        if on == "unix" {
            let dir = config.dataDir + "/ports"
            try FS.mkdirs(dir, mode: 0o711)
            let path = dir + "/\(info.exposeId).sock"
            fd = try Self.listenUnix(path, owner: UInt32(clamping: caller.uid))
            info.socketPath = path
        } else {
            let (f, bound) = try Self.listenLoopback(hostPort ?? 0)
            fd = f
            info.hostPort = bound
        }
        let engine = self
        let x = PortExposure(info: info, listenFd: fd, pid: rt.spawned.pid, wake: { [weak rt] in
            guard let rt, rt.idle.withLock({ $0.phase }) == .paused else {
                rt?.idle.withLock { $0.touch(now: Clock.nowMs()) }
                return
            }
            let done = DispatchSemaphore(value: 0)
            Task { _ = try? await engine.wake(id, caller: caller); done.signal() }
            done.wait()
        })
        rt.exposures.withLock { $0[info.exposeId] = x }
        if rt.hasExited {   // lost a race with teardown
            x.close()
            throw SandpitError(.invalidState, "sandbox \(id) stopped")
        }
        x.start()
        logger.info("port exposed", metadata: ["sandbox": "\(id)", "port": "\(port)", "url": "\(info.url)"])
        return info
    }

    /// Closes an exposure by its id, or every exposure of `port`.
    public func unexpose(_ id: String, exposeId: String?, port: Int?, caller: Caller) async throws -> Int {
        guard let rt = try runtime(id, caller: caller) else {
            _ = try await sandbox(id, caller: caller)
            return 0
        }
        let gone = rt.exposures.withLock { xs -> [PortExposure] in
            let hit = xs.values.filter { x in exposeId.map { x.info.exposeId == $0 } ?? (x.info.port == port) }
            for x in hit { xs[x.info.exposeId] = nil }
            return hit
        }
        if let e = exposeId, gone.isEmpty { throw SandpitError.notFound("Exposure", e) }
        for x in gone { x.close() }
        return gone.count
    }

    public func exposures(_ id: String, caller: Caller) async throws -> [Exposure] {
        guard let rt = try runtime(id, caller: caller) else {
            _ = try await sandbox(id, caller: caller)
            return []
        }
        return rt.exposures.withLock { $0.values.map(\.info) }.sorted { ($0.port, $0.exposeId) < ($1.port, $1.exposeId) }
    }

    static func listenLoopback(_ port: Int) throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw OSError(call: "socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = UInt16(port).bigEndian
        a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, len) == 0 && listen(fd, 128) == 0 && getsockname(fd, sa, &len) == 0
            }
        }
        guard ok else {
            let e = errno
            close(fd)
            if e == EADDRINUSE { throw SandpitError(.conflict, "host port \(port) is already in use") }
            throw OSError(call: "bind 127.0.0.1:\(port)", errno: e)
        }
        return (fd, Int(UInt16(bigEndian: a.sin_port)))
    }

    static func listenUnix(_ path: String, owner: UInt32) throws -> Int32 {
        var addr = sockaddr_un()
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SandpitError(.unavailable, "the socket path \(path) is too long for a Unix socket; use a shorter --data-dir or on:\"tcp\"")
        }
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw OSError(call: "socket", errno: errno) }
        unlink(path)
        let old = umask(0o177)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        umask(old)
        guard rc == 0, listen(fd, 128) == 0 else {
            let e = errno
            close(fd)
            throw OSError(call: "bind", errno: e, path: path)
        }
        if owner != 0 { chown(path, owner, gid_t(UInt32.max)) }
        return fd
    }

    // MARK: port.opened

    /// Registers an observer of ports opening and closing in live sandboxes.
    /// While any observer exists, the daemon looks at each running sandbox's
    /// listening sockets every 250 ms.
    public func observePorts(_ f: @escaping @Sendable (PortEvent) -> Void) -> Int64 {
        let (token, start) = portObservers.withLock { o -> (Int64, Bool) in
            let t = (o.keys.max() ?? 0) + 1
            o[t] = f
            return (t, o.count == 1)
        }
        if start { startPortMonitor() }
        return token
    }

    public func unobservePorts(_ token: Int64) { portObservers.withLock { _ = $0.removeValue(forKey: token) } }

    private func startPortMonitor() {
        Task { [weak self] in
            var known: [String: Set<ListeningPort>] = [:]
            var first = true
            while let self, !self.portObservers.withLock({ $0.isEmpty }), !self.closing.load(ordering: .acquiring) {
                let live = self.registry.withLock { Array($0.values) }.filter { !$0.hasExited && $0.idle.withLock({ $0.phase }) != .paused }
                var next: [String: Set<ListeningPort>] = [:]
                for rt in live {
                    let now = Set(Self.listening(pid: rt.spawned.pid))
                    next[rt.id] = now
                    guard !first else { continue }
                    let before = known[rt.id] ?? []
                    let owner = rt.record.owner
                    let events = now.subtracting(before).map { PortEvent(sandboxId: rt.id, owner: owner, port: $0, opened: true) }
                        + before.subtracting(now).map { PortEvent(sandboxId: rt.id, owner: owner, port: $0, opened: false) }
                    guard !events.isEmpty else { continue }
                    let fs = self.portObservers.withLock { Array($0.values) }
                    for e in events.sorted(by: { $0.port.port < $1.port.port }) { for f in fs { f(e) } }
                }
                // Paused sandboxes keep what was known (their sockets cannot change).
                for (id, ports) in known where next[id] == nil && self.registry.withLock({ $0[id] }) != nil { next[id] = ports }
                known = next
                first = false
                try? await Task.sleep(nanoseconds: 250_000_000)
            }
        }
    }
}
