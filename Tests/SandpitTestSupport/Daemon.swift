#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SandpitCore

/// Test support: starts the real `sandpit` binary on a scratch data dir and
/// speaks the real protocol to it. Set SANDPIT_KEEP_SCRATCH=1 to keep the
/// scratch folder for inspection.
public enum TestEnv {
    public static var isRoot: Bool { geteuid() == 0 }

    /// The directory holding the built products (`sandpit`, `sandpit-agent`).
    public static var productsDir: String {
        if let p = ProcessInfo.processInfo.environment["SANDPIT_BIN_DIR"] { return p }
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        // Test bundles live in <products>/X.xctest or next to the products.
        while !FileManager.default.fileExists(atPath: url.appendingPathComponent("sandpit").path), url.path != "/" {
            url = url.deletingLastPathComponent()
        }
        return url.path
    }

    public static var sandpit: String { productsDir + "/sandpit" }

    /// The repository's Policies/ directory.
    public static var policiesDir: String {
        var url = URL(fileURLWithPath: productsDir)
        while !FileManager.default.fileExists(atPath: url.appendingPathComponent("Policies/default.json").path), url.path != "/" {
            url = url.deletingLastPathComponent()
        }
        return url.appendingPathComponent("Policies").path
    }

    /// The repository's Fixtures/ directory.
    public static var fixturesDir: String {
        URL(fileURLWithPath: policiesDir).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    }

    /// A fresh scratch directory traversable by sandbox uids (mode 0755).
    public static func scratch(_ name: String) throws -> String {
        let dir = "/tmp/sandpit-test-\(name)-\(getpid())-\(Identifier.make("t").dropFirst(2))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o755)
        return dir
    }
}

/// A line-oriented JSON-RPC connection (blocking I/O; tests are serialized).
public final class LineConnection: @unchecked Sendable {
    public let readFd: Int32
    public let writeFd: Int32
    var buffer: [UInt8] = []
    var nextId: Int64 = 1000
    public var notifications: [JSONValue] = []

    public init(readFd: Int32, writeFd: Int32) {
        self.readFd = readFd
        self.writeFd = writeFd
    }

    public static func unix(_ path: String) throws -> LineConnection {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { Glibc.close(fd); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return LineConnection(readFd: fd, writeFd: fd)
    }

    public func sendRaw(_ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(writeFd, $0.baseAddress! + off, $0.count - off) }
            if n <= 0 { if errno == EINTR { continue }; return }
            off += n
        }
    }

    public func send(_ line: String) { sendRaw(Array((line + "\n").utf8)) }

    /// Bytes of `buffer` already searched for a newline.
    var scanned = 0
    /// When set, notifications go here instead of into `notifications` (for long streams).
    public var onNotification: ((JSONValue) -> Void)?

    /// Reads one line; nil on EOF or after `timeout` seconds. Lines may be
    /// megabytes long (file chunks), so only new bytes are searched.
    public func readLine(timeout: Double = 60) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let nl: Int? = buffer.withUnsafeBytes { b in
                guard b.count > scanned, let hit = memchr(b.baseAddress! + scanned, 0x0A, b.count - scanned) else { return nil }
                return UnsafeRawPointer(hit) - b.baseAddress!
            }
            if let nl {
                let l = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                scanned = 0
                return l
            }
            scanned = buffer.count
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            var pfd = pollfd(fd: readFd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, Int32(left * 1000)) <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            let n = chunk.withUnsafeMutableBytes { read(readFd, $0.baseAddress!, $0.count) }
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
    }

    public func readMessage(timeout: Double = 60) -> JSONValue? {
        guard let l = readLine(timeout: timeout) else { return nil }
        return try? JSONCodec.parse(l, maxDepth: 256)
    }

    /// Sends a request and returns its response, collecting notifications on the way.
    @discardableResult
    public func call(_ method: String, _ params: JSONValue = .object([:]), timeout: Double = 60) throws -> JSONValue {
        nextId += 1
        let id = nextId
        send(JSONCodec.encode(.object(["jsonrpc": "2.0", "id": .int(id), "method": .string(method), "params": params])))
        while let m = readMessage(timeout: timeout) {
            if m["id"] == nil {
                if let f = onNotification { f(m) } else { notifications.append(m) }
                continue
            }
            if m["id"] == .int(id) { return m }
        }
        throw TestFailure("no response to \(method) within \(timeout)s")
    }

    /// `call` that expects success and returns `result`.
    public func result(_ method: String, _ params: JSONValue = .object([:])) throws -> JSONValue {
        let r = try call(method, params)
        if let e = r["error"] { throw TestFailure("\(method) failed: \(JSONCodec.encode(e))") }
        return r["result"] ?? .null
    }

    public func close() {
        Glibc.close(readFd)
        if writeFd != readFd { Glibc.close(writeFd) }
    }
}

extension LineConnection {
    /// `exec.run` in the foreground: the result, plus stdout and stderr put
    /// back together from the exec's `exec.output` notifications.
    public func exec(_ sandboxId: String, shell: String, _ extra: JSONObject = [:]) throws
        -> (result: JSONValue, stdout: String, stderr: String, notes: [JSONValue])
    {
        notifications = []
        var p: JSONObject = ["sandboxId": .string(sandboxId), "shell": .string(shell)]
        for (k, v) in extra { p[k] = v }
        let r = try result("exec.run", .object(p))
        let notes = notifications.compactMap { $0["method"] == "exec.output" ? $0["params"] : nil }
        notifications = []
        func text(_ s: String) -> String {
            notes.filter { $0["stream"] == .string(s) }.map { n -> String in
                let d = n["data"]?.stringValue ?? ""
                return n["encoding"] == "base64" ? String(decoding: Base64.decode(d) ?? [], as: UTF8.self) : d
            }.joined()
        }
        return (r, text("stdout"), text("stderr"), notes)
    }
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A running `sandpit serve`, on stdio or on a socket.
public final class DaemonProcess: @unchecked Sendable {
    public let process: Process
    public let dataDir: String
    public let scratch: String
    public let socketPath: String?
    public let stdio: LineConnection?
    let stderrPipe = Pipe()

    public init(socket: Bool, name: String, dataDir: String? = nil, extraArgs: [String] = [], environment: [String: String] = [:]) throws {
        scratch = try TestEnv.scratch(name)
        self.dataDir = dataDir ?? scratch + "/data"
        process = Process()
        process.executableURL = URL(fileURLWithPath: TestEnv.sandpit)
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        // No warm pool unless a test asks: leak checks count agents, and pooled ones are alive by design.
        let pool = (extraArgs.contains("--warm-pool") ? [] : ["--warm-pool", "0"])
            + (extraArgs.contains("--warm-template-pool") ? [] : ["--warm-template-pool", "0"])
        var args = ["serve", "--data-dir", self.dataDir, "--storage-gib", "4", "--log-level", "debug"] + pool + extraArgs
        if socket {
            socketPath = scratch + "/sandpit.sock"
            args += ["--socket", socketPath!]
        } else {
            socketPath = nil
        }
        process.arguments = args
        let logPath = scratch + "/daemon.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        if socket {
            process.standardInput = FileHandle(forReadingAtPath: "/dev/null")
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            try process.run()
            stdio = nil
            let deadline = Date().addingTimeInterval(60)
            let path = scratch + "/sandpit.sock"
            while !FileManager.default.fileExists(atPath: path) {
                guard process.isRunning, Date() < deadline else {
                    throw TestFailure("daemon did not listen: \((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")")
                }
                usleep(20_000)
            }
        } else {
            let inPipe = Pipe(), outPipe = Pipe()
            process.standardInput = inPipe
            process.standardOutput = outPipe
            try process.run()
            stdio = LineConnection(readFd: outPipe.fileHandleForReading.fileDescriptor, writeFd: inPipe.fileHandleForWriting.fileDescriptor)
        }
    }

    public var log: String { (try? String(contentsOfFile: scratch + "/daemon.log", encoding: .utf8)) ?? "" }

    public func connect() throws -> LineConnection {
        if let s = socketPath {
            // The socket file appears at bind(), a moment before listen().
            for _ in 0..<100 {
                do { return try LineConnection.unix(s) } catch let e as POSIXError where e.code == .ECONNREFUSED { usleep(10_000) }
            }
            return try LineConnection.unix(s)
        }
        return stdio!
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    public func cleanup() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(30)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { _ = stop(signal: SIGKILL) }
        }
        if ProcessInfo.processInfo.environment["SANDPIT_KEEP_SCRATCH"] == nil {
            // The loop store is unmounted by the daemon; if it was killed, do it here.
            _ = try? FileManager.default.removeItem(atPath: scratch + "/sandpit.sock")
            if Host.isMounted(dataDir + "/store") { Host.sh("umount -l '\(dataDir)/store'") }
            try? FileManager.default.removeItem(atPath: scratch)
        }
    }
}

/// Host inspection for leak checks.
public enum Host {
    public static func mountinfo() -> String { (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? "" }
    public static func isMounted(_ path: String) -> Bool { mountinfo().split(separator: "\n").contains { $0.split(separator: " ").count > 4 && $0.split(separator: " ")[4] == Substring(path) } }

    /// Host pids whose command line contains `needle`.
    public static func pids(matching needle: String) -> [Int32] {
        let me = getpid()
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            guard pid != me, let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !d.isEmpty else { return false }
            // Zombies (already dead, waiting for a parent to reap them) have an empty cmdline and are skipped.
            return String(decoding: d.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(needle)
        }
    }

    /// Live sandbox agents on the host: processes whose argv[0] is
    /// `sandpit-agent` (a shell or grep that merely mentions the name is not one),
    /// one per sandbox; not their spare processes (forks named `sandpit-spare`).
    public static func agents() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !d.isEmpty,
                  (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) != "sandpit-spare\n" else { return false }
            return d.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false).first.map { Array($0) } == Array("sandpit-agent".utf8)
        }
    }

    /// cgroup directories (any v1 hierarchy or v2) whose name contains `needle`.
    public static func cgroups(matching needle: String) -> [String] {
        sh("find /sys/fs/cgroup -maxdepth 7 -type d -name '*\(needle)*' 2>/dev/null").output.split(separator: "\n").map(String.init)
    }

    @discardableResult
    public static func sh(_ cmd: String) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", cmd]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try? p.run()
        let d = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: d, as: UTF8.self))
    }
}

/// Runs `body` with a daemon and always cleans up (LIFO), keeping the scratch dir when asked.
public func withDaemon<T>(socket: Bool = true, _ name: String = #function, _ body: (DaemonProcess) throws -> T) throws -> T {
    let clean = name.filter { $0.isLetter || $0.isNumber }
    let d = try DaemonProcess(socket: socket, name: String(clean.prefix(24)))
    defer { d.cleanup() }
    return try body(d)
}
