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

/// Turns signals into awaitable events (the handlers are dispatch sources).
/// Each signal wakes one waiter of `next()`, or waits for the next call. A
/// waiter that is cancelled (a task group ending) gets 0 and leaves the
/// watcher as it was: it can be awaited again, in a loop of task groups.
final class SignalWatcher: Sendable {
    private struct State {
        var pending: [Int32] = []
        var waiters: [UInt64: CheckedContinuation<Int32, Never>] = [:]
        var cancelled: Set<UInt64> = []
        var nextId: UInt64 = 0
        var stopped = false
    }
    private final class Core: Sendable {
        let state = Mutex(State())

        func deliver(_ sig: Int32) {
            let waiter = state.withLock { s -> CheckedContinuation<Int32, Never>? in
                if let (id, c) = s.waiters.first {
                    s.waiters[id] = nil
                    return c
                }
                s.pending.append(sig)
                return nil
            }
            waiter?.resume(returning: sig)
        }
    }
    private let core: Core
    nonisolated(unsafe) private let sources: [DispatchSourceSignal]   // kept alive; never mutated after init

    init(_ signals: [Int32]) {
        let core = Core()
        var srcs: [DispatchSourceSignal] = []
        for sig in signals {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { core.deliver(sig) }
            src.resume()
            srcs.append(src)
        }
        self.core = core
        sources = srcs
    }

    /// Wakes every waiter with 0; later calls of `next()` return 0 at once.
    func stop() {
        let waiters = core.state.withLock { s -> [CheckedContinuation<Int32, Never>] in
            s.stopped = true
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in waiters { w.resume(returning: 0) }
    }

    /// The next signal, or 0 when stopped or cancelled.
    func next() async -> Int32 {
        let id = core.state.withLock { s -> UInt64 in s.nextId += 1; return s.nextId }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Int32, Never>) in
                let now = core.state.withLock { s -> Int32? in
                    if !s.pending.isEmpty { return s.pending.removeFirst() }
                    if s.stopped || s.cancelled.remove(id) != nil { return 0 }
                    s.waiters[id] = c
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            let waiter = core.state.withLock { s -> CheckedContinuation<Int32, Never>? in
                if let c = s.waiters.removeValue(forKey: id) { return c }
                s.cancelled.insert(id)
                return nil
            }
            waiter?.resume(returning: 0)
        }
    }
}
