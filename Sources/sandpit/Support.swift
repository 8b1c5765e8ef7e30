#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import SandpitOS
import Synchronization

enum ProcessEnv {
    static func get(_ k: String) -> String? { getenv(k).map { String(cString: $0) } }
}

/// A user's `sandpit serve` (or engine command) runs again as root of a
/// user namespace of its own: rootless mode (see `Rootless`).
enum RootlessEntry {
    /// Never returns when it enters rootless mode: the command runs again
    /// in the namespace and this process exits with its status.
    static func ifNeeded() throws {
        guard geteuid() != 0, !Rootless.active else { return }
        var env: [String] = []
        var p = environ
        while let c = p.pointee { env.append(String(cString: c)); p += 1 }
        try Rootless.enter(arguments: CommandLine.arguments, environment: env)
    }
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var b = Array(s.utf8)
        _ = b.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress!, $0.count) }
    }
}

enum Executable {
    /// Directory of the running binary (the agent is built next to it).
    static func directory() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return "." }
        let path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
    }

    /// The agent next to this binary: the lean C-only build (`scripts/build-agent`)
    /// when it is there, else the one SwiftPM built.
    static func findAgent(in dir: String) -> String {
        let lean = dir + "/sandpit-agent.lean"
        return access(lean, X_OK) == 0 ? lean : dir + "/sandpit-agent"
    }

    /// Policies shipped with the checkout (`.build/<config>/sandpit` → `Policies/`), or /etc/sandpit/policies.
    static func findPolicies() -> String? {
        var dir = directory()
        for _ in 0..<4 {
            var st = stat()
            if stat(dir + "/Policies", &st) == 0 { return dir + "/Policies" }
            dir = String(dir[..<(dir.lastIndex(of: "/") ?? dir.startIndex)])
            if dir.isEmpty { break }
        }
        var st = stat()
        return stat("/etc/sandpit/policies", &st) == 0 ? "/etc/sandpit/policies" : nil
    }
}

extension LoggingSystem {
    private static let once = Mutex(false)
    static func bootstrapOnce() {
        let first = once.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        if first { bootstrap { StreamLogHandler.standardError(label: $0) } }
    }
}

/// Turns SIGINT/SIGTERM into an awaitable event (the handlers are dispatch sources).
final class SignalWatcher: @unchecked Sendable {
    let sources: [DispatchSourceSignal]   // kept alive; never mutated after init
    let stream: AsyncStream<Int32>
    let continuation: AsyncStream<Int32>.Continuation

    init(_ signals: [Int32]) {
        let (s, cont) = AsyncStream<Int32>.makeStream()
        stream = s
        continuation = cont
        var srcs: [DispatchSourceSignal] = []
        for sig in signals {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { cont.yield(sig) }
            src.resume()
            srcs.append(src)
        }
        sources = srcs
    }

    func stop() { continuation.finish() }

    func next() async -> Int32 {
        for await s in stream { return s }
        return 0
    }
}
