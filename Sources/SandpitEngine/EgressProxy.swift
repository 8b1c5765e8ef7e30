#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import Logging
import SandpitCore
import SandpitOS
import Synchronization

/// The way out for a sandbox whose network mode is `allowlist`.
///
/// The sandbox keeps only its loopback interface. The daemon creates a
/// listening socket *inside* the sandbox's network namespace
/// (127.0.0.1:3128) and serves it from the host side: an HTTP proxy that
/// accepts `CONNECT host:port` (HTTPS, anything tunnelled) and plain
/// `GET http://host/...` requests, and connects out only to hosts and ports
/// on the sandbox's allowlist. The sandbox never gets a route, an address or
/// a DNS server; names are resolved by the daemon.
///
/// Blocking I/O on plain threads (one per connection): egress from a local
/// sandbox is a handful of connections (a `pip install`), and threads keep
/// the relay simple and off Swift's cooperative pool.
final class EgressProxy: Sendable {
    let listenFd: Int32
    let rules: [AllowRule]
    let sandboxId: String
    let logger: Logger
    let closed = Atomic<Bool>(false)

    static let headLimit = 16 << 10
    static let connectTimeoutSec = 10

    private init(listenFd: Int32, rules: [AllowRule], sandboxId: String, logger: Logger) {
        self.listenFd = listenFd
        self.rules = rules
        self.sandboxId = sandboxId
        self.logger = logger
    }

    /// Listens on 127.0.0.1:`port` in the network namespace of `pid` and starts serving.
    static func start(pid: Int32, port: UInt16, allow: [String], sandboxId: String, logger: Logger) async throws -> EgressProxy {
        let nsPath = "/proc/\(pid)/ns/net"
        let ns = FileDescriptor(try sys("open", path: nsPath) { open(nsPath, O_RDONLY | O_CLOEXEC) })
        // Made in the sandbox's namespace on a thread of sp_listen_in_netns's own; bind may block briefly.
        let fd = try await EngineThread.run {
            try sys("listen in sandbox netns", path: nsPath) { sp_listen_in_netns(ns.raw, port) }
        }
        let proxy = EgressProxy(listenFd: fd, rules: allow.compactMap(AllowRule.init), sandboxId: sandboxId, logger: logger)
        EngineThread.detach { Sock.acceptLoop(proxy.listenFd, closed: proxy.closed) { proxy.serve($0) } }
        return proxy
    }

    /// Stops accepting; open tunnels end when the sandbox's side closes.
    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(listenFd, Int32(SHUT_RDWR))
    }

    // MARK: one connection

    struct Request {
        var method: String
        var host: String
        var port: Int
        var path: String            // origin-form for plain HTTP
        var headerLines: [String]   // after the request line
        var rest: [UInt8]           // bytes read past the head
    }

    func serve(_ client: Int32) {
        Sock.setTimeout(client, seconds: 30)
        guard let req = readRequest(client) else {
            reply(client, 400, "expected \"CONNECT host:port\" or an absolute http:// URL")
            return
        }
        guard rules.contains(where: { $0.matches(host: req.host, port: req.port) }) else {
            logger.info("egress denied", metadata: ["sandbox": "\(sandboxId)", "to": "\(req.host):\(req.port)"])
            reply(client, 403, "\(req.host):\(req.port) is not on this sandbox's allowlist")
            return
        }
        let upstream: Int32
        switch connectOut(host: req.host, port: req.port) {
        case .success(let fd): upstream = fd
        case .failure(let why):
            reply(client, 502, "cannot reach \(req.host):\(req.port): \(why)")
            return
        }
        defer { Glibc.close(upstream) }
        logger.debug("egress", metadata: ["sandbox": "\(sandboxId)", "to": "\(req.host):\(req.port)", "method": "\(req.method)"])
        if req.method == "CONNECT" {
            guard Sock.writeAll(client, Array("HTTP/1.1 200 Connection Established\r\n\r\n".utf8)) else { return }
        } else {
            // One request per connection keeps the relay a plain byte pipe.
            var head = "\(req.method) \(req.path) HTTP/1.1\r\n"
            for l in req.headerLines {
                let name = l.prefix { $0 != ":" }.lowercased()
                if name == "connection" || name == "proxy-connection" || name == "proxy-authorization" || name == "keep-alive" { continue }
                head += l + "\r\n"
            }
            head += "Connection: close\r\n\r\n"
            guard Sock.writeAll(upstream, Array(head.utf8)) else { return }
        }
        if !req.rest.isEmpty && !Sock.writeAll(upstream, req.rest) { return }
        Sock.setTimeout(client, seconds: 0)
        Sock.relay(client, upstream)
    }

    private func readRequest(_ fd: Int32) -> Request? {
        guard let (headBytes, rest) = Sock.readHead(fd, limit: Self.headLimit) else { return nil }
        let head = String(decoding: headBytes, as: UTF8.self)
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let first = lines.removeFirst().split(separator: " ")
        guard first.count == 3, first[2].hasPrefix("HTTP/1.") else { return nil }
        let method = String(first[0]), target = String(first[1])
        var host: String, port: Int, path = ""
        if method == "CONNECT" {
            guard let hp = Self.hostPort(target, defaultPort: nil) else { return nil }
            (host, port) = hp
        } else {
            guard target.lowercased().hasPrefix("http://") else { return nil }
            let afterScheme = target.dropFirst(7)
            let slash = afterScheme.firstIndex(of: "/") ?? afterScheme.endIndex
            guard let hp = Self.hostPort(String(afterScheme[..<slash]), defaultPort: 80) else { return nil }
            (host, port) = hp
            path = slash == afterScheme.endIndex ? "/" : String(afterScheme[slash...])
        }
        guard !method.isEmpty, method.allSatisfy({ $0.isLetter }) else { return nil }
        return Request(method: method, host: host.lowercased(), port: port, path: path, headerLines: lines.filter { !$0.isEmpty },
                       rest: rest)
    }

    static func hostPort(_ s: String, defaultPort: Int?) -> (String, Int)? {
        var host = s, port = defaultPort
        if s.hasPrefix("[") {   // [v6]:port
            guard let close = s.firstIndex(of: "]") else { return nil }
            host = String(s[s.index(after: s.startIndex)..<close])
            let after = s[s.index(after: close)...]
            if after.hasPrefix(":") { port = Int(after.dropFirst()) }
        } else if let colon = s.lastIndex(of: ":") {
            host = String(s[..<colon])
            port = Int(s[s.index(after: colon)...])
        }
        guard let p = port, (1...65535).contains(p), !host.isEmpty, !host.contains("@") else { return nil }
        return (host, p)
    }

    enum ConnectResult { case success(Int32), failure(String) }

    /// Resolves and connects from the host. A rule naming a host (not an IP
    /// literal) never leads to a loopback or link-local address, so DNS cannot
    /// point an allowed name at the host's own services.
    private func connectOut(host: String, port: Int) -> ConnectResult {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else { return .failure(String(cString: gai_strerror(rc))) }
        defer { freeaddrinfo(first) }
        let literal = Self.isIPLiteral(host)
        var lastError = "no usable address"
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            p = ai.pointee.ai_next
            if !literal && Self.isLocal(ai.pointee.ai_addr) { lastError = "resolves to a loopback or link-local address"; continue }
            let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { lastError = String(cString: strerror(errno)); continue }
            Sock.setTimeout(fd, seconds: Self.connectTimeoutSec, send: true)
            if connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 {
                Sock.setTimeout(fd, seconds: 0, send: true)
                return .success(fd)
            }
            lastError = String(cString: strerror(errno))
            Glibc.close(fd)
        }
        return .failure(lastError)
    }

    static func isIPLiteral(_ h: String) -> Bool {
        var a4 = in_addr(), a6 = in6_addr()
        return inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1
    }

    static func isLocal(_ sa: UnsafeMutablePointer<sockaddr>) -> Bool {
        if Int32(sa.pointee.sa_family) == AF_INET {
            let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
            return a >> 24 == 127 || a >> 16 == 0xA9FE || a == 0
        }
        if Int32(sa.pointee.sa_family) == AF_INET6 {
            let b = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) } }
            let loopback = b[0..<15].allSatisfy { $0 == 0 } && b[15] == 1
            let linkLocal = b[0] == 0xFE && (b[1] & 0xC0) == 0x80
            let mapped = b[0..<10].allSatisfy { $0 == 0 } && b[10] == 0xFF && b[11] == 0xFF && (b[12] == 127 || (b[12] == 169 && b[13] == 254))
            return loopback || linkLocal || mapped || b.allSatisfy { $0 == 0 }
        }
        return true
    }

    private func reply(_ fd: Int32, _ status: Int, _ message: String) {
        Sock.reply(fd, status, "sandpit proxy: " + message)
    }
}
