#if canImport(Glibc)
import Glibc
#endif
import SandpitCore
import SandpitOS
import Synchronization

/// Global caps: live sandboxes, their memory (the policies' memoryBytes),
/// concurrent execs. A request over a cap first makes room by hibernating
/// the least recently used idle sandboxes; if that is not enough it waits
/// in a fair queue (round-robin between clients, FIFO within one) until
/// room frees up or its deadline passes (then `busy`).
final class Admission: Sendable {
    struct Usage: Sendable { var sandboxes = 0; var memory: Int64 = 0; var execs = 0 }
    enum Kind: Sendable { case sandbox(memory: Int64), exec }

    struct Waiter {
        var kind: Kind
        var continuation: CheckedContinuation<Void, Error>
    }

    struct State {
        var usage = Usage()
        var queue = FairQueue<UInt64>()
        var waiters: [UInt64: Waiter] = [:]
        var nextTicket: UInt64 = 1
    }

    let maxSandboxes: Int
    let memoryBudget: Int64?
    let maxExecs: Int?
    let state = Mutex(State())

    init(maxSandboxes: Int, memoryBudget: Int64?, maxExecs: Int?) {
        self.maxSandboxes = maxSandboxes
        self.memoryBudget = memoryBudget
        self.maxExecs = maxExecs
    }

    var usage: Usage { state.withLock { $0.usage } }
    var queued: Int { state.withLock { $0.queue.count } }

    private func fits(_ k: Kind, _ u: Usage) -> Bool {
        switch k {
        case .sandbox(let m): u.sandboxes < maxSandboxes && (memoryBudget.map { u.memory + m <= $0 } ?? true)
        case .exec: maxExecs.map { u.execs < $0 } ?? true
        }
    }

    private static func take(_ k: Kind, _ u: inout Usage) {
        switch k {
        case .sandbox(let m): u.sandboxes += 1; u.memory += m
        case .exec: u.execs += 1
        }
    }

    /// Takes room now if there is some and nobody is waiting for it.
    func tryAcquire(_ k: Kind) -> Bool {
        state.withLock { s in
            guard s.queue.isEmpty || !hasWaiter(of: k, s), fits(k, s.usage) else { return false }
            Self.take(k, &s.usage)
            return true
        }
    }

    private func hasWaiter(of k: Kind, _ s: State) -> Bool {
        s.waiters.values.contains { w in
            switch (w.kind, k) {
            case (.sandbox, .sandbox), (.exec, .exec): true
            default: false
            }
        }
    }

    /// Waits in the fair queue. `onQueued` gets the 1-based position once.
    func wait(_ k: Kind, client: Int64, deadlineMs: Int?, onQueued: @Sendable (Int) async -> Void) async throws {
        let ticket = state.withLock { s -> UInt64 in
            defer { s.nextTicket += 1 }
            return s.nextTicket
        }
        let position = state.withLock { s -> Int in
            s.queue.enqueue(ticket, client: client)
            return s.queue.position(of: ticket) ?? s.queue.count
        }
        await onQueued(position)
        var timer: Task<Void, Never>?
        if let ms = deadlineMs {
            timer = Task { [self] in
                try? await Task.sleep(for: .milliseconds(ms))
                if Task.isCancelled { return }
                let w = state.withLock { s -> Waiter? in
                    s.queue.remove(ticket)
                    return s.waiters.removeValue(forKey: ticket)
                }
                w?.continuation.resume(throwing: SandpitError(.busy, "still queued after \(ms) ms (queueTimeoutMs): the daemon is at its limits",
                                                              details: ["queuedMs": .int(Int64(ms))]))
            }
        }
        defer { timer?.cancel() }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            let ready = state.withLock { s -> Bool in
                guard s.queue.position(of: ticket) != nil else { return false }   // timed out already
                s.waiters[ticket] = Waiter(kind: k, continuation: c)
                return true
            }
            if !ready { c.resume(throwing: SandpitError(.busy, "queue deadline passed")) }
            grant()
        }
    }

    /// Gives room back and hands it to waiters, fairly.
    func release(_ k: Kind) {
        state.withLock { s in
            switch k {
            case .sandbox(let m): s.usage.sandboxes = max(0, s.usage.sandboxes - 1); s.usage.memory = max(0, s.usage.memory - m)
            case .exec: s.usage.execs = max(0, s.usage.execs - 1)
            }
        }
        grant()
    }

    private func grant() {
        var ready: [CheckedContinuation<Void, Error>] = []
        state.withLock { s in
            while true {
                let usage = s.usage, waiters = s.waiters
                guard let t = s.queue.next(where: { t in waiters[t].map { fits($0.kind, usage) } ?? false }),
                      let w = s.waiters.removeValue(forKey: t) else { break }
                Self.take(w.kind, &s.usage)
                ready.append(w.continuation)
            }
        }
        for c in ready { c.resume() }
    }
}

/// How a request waits for room: whose turn it is, for how long, and how to
/// tell the client it is queued.
public struct AdmissionTicket: Sendable {
    public var client: Int64
    public var deadlineMs: Int?
    public var onQueued: @Sendable (Int) async -> Void

    public init(client: Int64, deadlineMs: Int? = nil, onQueued: @escaping @Sendable (Int) async -> Void = { _ in }) {
        self.client = client
        self.deadlineMs = deadlineMs
        self.onQueued = onQueued
    }
}

extension Engine {
    /// Room for one more live sandbox of `memory` bytes: now, after
    /// hibernating idle ones (least recently used first), or after waiting.
    func admitSandbox(memory: Int64, _ t: AdmissionTicket) async throws {
        let kind = Admission.Kind.sandbox(memory: memory)
        if admission.tryAcquire(kind) { return }
        let now = Clock.nowMs()
        let idle = registry.withLock { Array($0.values) }
            .filter { rt in rt.idle.withLock { $0.isIdle(now: now) && $0.busy == 0 } }
            .sorted { a, b in a.idle.withLock { $0.lastActivityMs } < b.idle.withLock { $0.lastActivityMs } }
        for victim in idle {
            do { try await hibernate(victim, reason: "admission") } catch { continue }
            logger.info("hibernated to make room", metadata: ["sandbox": "\(victim.id)"])
            if admission.tryAcquire(kind) { return }
        }
        try await admission.wait(kind, client: t.client, deadlineMs: t.deadlineMs, onQueued: t.onQueued)
    }

    func admitExec(_ t: AdmissionTicket) async throws {
        if admission.tryAcquire(.exec) { return }
        try await admission.wait(.exec, client: t.client, deadlineMs: t.deadlineMs, onQueued: t.onQueued)
    }

    /// Gives a sandbox's room back, once, when it stops being live.
    func releaseAdmission(_ rt: SandboxRuntime) {
        guard let m = rt.admittedMemory.withLock({ v -> Int64? in defer { v = nil }; return v }) else { return }
        admission.release(.sandbox(memory: m))
    }
}

extension Engine {
    /// Usage against the caps, for server.info.
    public var usageJSON: JSONValue {
        let u = admission.usage
        return .object([
            "sandboxes": .int(Int64(u.sandboxes)), "maxSandboxes": .int(Int64(config.maxSandboxes)),
            "memoryBytes": .int(u.memory), "memoryBudgetBytes": config.memoryBudgetBytes.map { .int($0) } ?? .null,
            "execs": .int(Int64(u.execs)), "maxExecs": config.maxExecs.map { .int(Int64($0)) } ?? .null,
            "queued": .int(Int64(admission.queued)),
            "hibernated": .int(Int64(dormant.withLock { $0.count })),
        ])
    }

    /// One tenant's own figures: its live sandboxes and the memory they use.
    public func usage(of owner: Int64) -> JSONValue {
        let mine = registry.withLock { $0.values.filter { $0.record.owner == owner } }
        return .object(["sandboxes": .int(Int64(mine.count)), "memoryBytes": .int(mine.reduce(0) { $0 + $1.cgroup.memoryUsage() })])
    }

    /// Idle time and memory in use of a live sandbox (nil when not live).
    public func liveStats(_ id: String) -> (idleMs: Int64, memoryBytes: Int64)? {
        guard let rt = registry.withLock({ $0[id] }) else { return nil }
        let idle = rt.idle.withLock { $0.idleMs(now: Clock.nowMs()) }
        return (idle, rt.cgroup.memoryUsage())
    }
}
