#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SandpitCore
import SandpitTestSupport

/// port.* over the real protocol: listening ports, waiting for one, and
/// exposing one to the host with and without a token.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct PortTests {
    /// One HTTP/1.0 exchange over `fd`: the status code and the body.
    static func http(_ fd: Int32, _ request: String) -> (status: Int, body: String) {
        var bytes = Array(request.utf8)
        while !bytes.isEmpty {
            let n = write(fd, bytes, bytes.count)
            if n <= 0 { break }
            bytes.removeFirst(n)
        }
        let text = String(decoding: readToEnd(fd), as: UTF8.self)
        close(fd)
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return (status, body)
    }

    static func readToEnd(_ fd: Int32) -> [UInt8] {
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { return got }
            got += buf[0..<n]
        }
    }

    static func tcp(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = UInt16(port).bigEndian
        a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if rc != 0 { close(fd); return -1 }
        return fd
    }

    static func unix(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 { close(fd); return -1 }
        return fd
    }

    @Test func anHTTPServerIsReachedThroughAnExposedPortOnlyWithItsToken() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            _ = try c.result("sandbox.watch", ["sandboxId": .string(sb)])
            #expect(try c.result("port.list", ["sandboxId": .string(sb)])["ports"] == [])
            _ = try c.result("fs.write", ["sandboxId": .string(sb), "path": "site/index.html", "text": "hello from the sandbox\n"])
            _ = try c.result("exec.run", ["sandboxId": .string(sb), "shell": "cd site && exec python3 -m http.server 8000 --bind 127.0.0.1", "background": true])
            let ready = try c.result("port.wait", ["sandboxId": .string(sb), "port": 8000, "timeoutMs": 20000, "httpPath": "/"])
            #expect(ready["ready"] == true && ready["status"] == 200)
            let ports = try c.result("port.list", ["sandboxId": .string(sb)])["ports"]!.arrayValue!
            #expect(ports.contains { $0["port"] == 8000 && $0["address"] == "127.0.0.1" })
            #expect(eventually {
                _ = try? c.call("server.info")
                return c.notifications.contains { $0["method"] == "port.opened" && $0["params"]?["port"] == 8000 && $0["params"]?["sandboxId"] == .string(sb) }
            }, "a sandbox.watch client hears port.opened")

            let x = try c.result("port.expose", ["sandboxId": .string(sb), "port": 8000])
            let hostPort = Int(x["hostPort"]!.intValue!), token = x["token"]!.stringValue!
            #expect(x["url"] == .string("http://127.0.0.1:\(hostPort)/") && token.count >= 32)
            // Without the token, or with a wrong one: 401, and the sandbox's server never sees the request.
            #expect(Self.http(Self.tcp(hostPort), "GET /index.html HTTP/1.0\r\n\r\n").status == 401)
            let wrong = token.dropLast() + (token.last == "x" ? "y" : "x")   // differs from the token in its last character
            #expect(Self.http(Self.tcp(hostPort), "GET /index.html HTTP/1.0\r\nAuthorization: Bearer \(wrong)\r\n\r\n").status == 401)
            // With it, as a header, our own header, or a query parameter (which becomes a cookie).
            let ok = Self.http(Self.tcp(hostPort), "GET /index.html HTTP/1.0\r\nAuthorization: Bearer \(token)\r\n\r\n")
            #expect(ok.status == 200 && ok.body == "hello from the sandbox\n")
            #expect(Self.http(Self.tcp(hostPort), "GET /index.html HTTP/1.0\r\nX-Sandpit-Token: \(token)\r\n\r\n").status == 200)
            let viaQuery = Self.http(Self.tcp(hostPort), "GET /index.html?sandpit_token=\(token) HTTP/1.0\r\n\r\n")
            #expect(viaQuery.status == 302)
            #expect(Self.http(Self.tcp(hostPort), "GET /index.html HTTP/1.0\r\nCookie: a=b; sandpit_token=\(token)\r\n\r\n").status == 200)
            // The same server on a Unix socket file only the caller can open.
            let u = try c.result("port.expose", ["sandboxId": .string(sb), "port": 8000, "on": "unix"])
            let path = u["socketPath"]!.stringValue!
            var st = stat()
            #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
            #expect(Self.http(Self.unix(path), "GET / HTTP/1.0\r\n\r\n").status == 401)
            #expect(Self.http(Self.unix(path), "GET /index.html HTTP/1.0\r\nAuthorization: Bearer \(u["token"]!.stringValue!)\r\n\r\n").body == "hello from the sandbox\n")
            // Listing does not repeat the tokens.
            let listed = try c.result("port.list", ["sandboxId": .string(sb)])["exposed"]!.arrayValue!
            #expect(listed.count == 2 && listed.allSatisfy { $0["token"] == nil && $0["tokenRequired"] == true })
            // The sandbox itself still has no interface but loopback.
            #expect(try a.sh(sb, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '").stdout == "lo\n")
            // Deleting the sandbox closes both.
            _ = try c.result("sandbox.delete", ["sandboxId": .string(sb)])
            #expect(Self.tcp(hostPort) < 0, "the host port is closed")
            #expect(!FileManager.default.fileExists(atPath: path), "the socket file is removed")
        }
    }

    @Test func rawTCPEchoesThroughATokenlessTCPExposure() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            let echo = """
            import socket
            s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::1", 9000)); s.listen()
            while True:
                conn, _ = s.accept()
                while (d := conn.recv(65536)): conn.sendall(d)
                conn.close()
            """
            _ = try c.result("fs.write", ["sandboxId": .string(sb), "path": "echo.py", "text": .string(echo)])
            _ = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["python3", "echo.py"], "background": true])
            _ = try c.result("port.wait", ["sandboxId": .string(sb), "port": 9000, "timeoutMs": 20000])
            let x = try c.result("port.expose", ["sandboxId": .string(sb), "port": 9000, "on": "tcp", "token": false])
            #expect(x["token"] == nil && x["tokenRequired"] == false)
            let fd = Self.tcp(Int(x["hostPort"]!.intValue!))
            #expect(fd >= 0)
            // Binary, not HTTP: 1 MiB of every byte value comes back unchanged.
            let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            var sent = 0
            while sent < payload.count {
                let n = payload.withUnsafeBytes { write(fd, $0.baseAddress! + sent, min(65536, payload.count - sent)) }
                if n <= 0 { break }
                sent += n
            }
            shutdown(fd, Int32(SHUT_WR))
            let got = Self.readToEnd(fd)
            close(fd)
            #expect(got == payload)
            #expect(try c.result("port.unexpose", ["sandboxId": .string(sb), "exposeId": x["exposeId"]!])["closed"] == 1)
            #expect(Self.tcp(Int(x["hostPort"]!.intValue!)) < 0)
        }
    }

    @Test func portWaitTimesOutSayingWhatItSaw() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            let none = try c.call("port.wait", ["sandboxId": .string(sb), "port": 8123, "timeoutMs": 300])
            #expect(none["error"]?["data"]?["code"] == "timeout")
            #expect(none["error"]?["data"]?["lastSeen"]?.stringValue?.contains("refused") == true)
            // A server that answers 503 is listening but not ready for an httpPath wait.
            let failing = """
            import http.server
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self): self.send_response(503); self.end_headers()
            http.server.HTTPServer(("127.0.0.1", 8124), H).serve_forever()
            """
            _ = try c.result("fs.write", ["sandboxId": .string(sb), "path": "s.py", "text": .string(failing)])
            _ = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["python3", "s.py"], "background": true])
            _ = try c.result("port.wait", ["sandboxId": .string(sb), "port": 8124, "timeoutMs": 20000])
            let busy = try c.call("port.wait", ["sandboxId": .string(sb), "port": 8124, "timeoutMs": 500, "httpPath": "/health"])
            #expect(busy["error"]?["data"]?["code"] == "timeout")
            #expect(busy["error"]?["data"]?["lastSeen"] == "HTTP 503")
            #expect(try c.call("port.wait", ["sandboxId": .string(sb), "port": 0])["error"]?["code"] == -32602)
            #expect(try c.call("port.expose", ["sandboxId": .string(sb), "port": 80, "on": "udp"])["error"]?["code"] == -32602)
        }
    }
}
