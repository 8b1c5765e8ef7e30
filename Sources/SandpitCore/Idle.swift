/// When an idle sandbox is paused, hibernated and deleted. Durations in ms
/// of idleness; nil = never.
public struct IdlePolicy: Sendable, Equatable {
    public var pauseAfterMs: Int64?
    public var hibernateAfterMs: Int64?
    public var deleteAfterMs: Int64?
    /// Whether processes left running by finished execs (a dev server, say)
    /// keep the sandbox awake.
    public var backgroundKeepsAwake: Bool

    /// A sandbox nobody uses is deleted after a week by default, so a client
    /// that forgets its sandboxes does not fill the disk forever.
    public static let defaultRetentionMs: Int64 = 7 * 86_400_000

    public init(pauseAfterMs: Int64? = nil, hibernateAfterMs: Int64? = nil, deleteAfterMs: Int64? = nil, backgroundKeepsAwake: Bool = true) {
        self.pauseAfterMs = pauseAfterMs
        self.hibernateAfterMs = hibernateAfterMs
        self.deleteAfterMs = deleteAfterMs
        self.backgroundKeepsAwake = backgroundKeepsAwake
    }

    /// "7d", "3h", "20m", "45s": how long, for a log line or a reason.
    public static func describe(ms: Int64) -> String {
        ms >= 86_400_000 ? "\(ms / 86_400_000)d" : ms >= 3_600_000 ? "\(ms / 3_600_000)h" : ms >= 60_000 ? "\(ms / 60_000)m" : "\(ms / 1000)s"
    }

    public var json: JSONValue {
        .object([
            "pauseAfterMs": pauseAfterMs.map { .int($0) } ?? .null, "hibernateAfterMs": hibernateAfterMs.map { .int($0) } ?? .null,
            "deleteAfterMs": deleteAfterMs.map { .int($0) } ?? .null, "backgroundKeepsAwake": .bool(backgroundKeepsAwake),
        ])
    }
}

/// The idle state machine of one sandbox: pure, driven by events and an
/// injected clock (`now`, ms). The daemon feeds it and asks `due(now:)`.
///
/// A sandbox is idle when no request for it is in flight, no exec or code
/// cell runs in it, no keepalive lease or connected client holds it, and
/// (when the policy says background processes count) no process it left
/// running is alive. Idleness is measured from the later of the last
/// activity and the end of the last lease.
public struct IdleTracker: Sendable, Equatable {
    public enum Phase: String, Sendable { case running, paused, hibernated }
    public enum Action: String, Sendable { case pause, hibernate, delete }

    public var policy: IdlePolicy
    public private(set) var phase: Phase
    public private(set) var lastActivityMs: Int64
    public private(set) var busy = 0
    public private(set) var leaseUntilMs: Int64?
    public private(set) var holders = 0
    public var backgroundProcesses = false

    public init(policy: IdlePolicy, phase: Phase = .running, now: Int64) {
        self.policy = policy
        self.phase = phase
        self.lastActivityMs = now
    }

    /// A request named the sandbox.
    public mutating func touch(now: Int64) { lastActivityMs = max(lastActivityMs, now) }
    /// Work started (an exec, a cell, a request in flight); pair with `end`.
    public mutating func begin(now: Int64) { busy += 1; touch(now: now) }
    public mutating func end(now: Int64) { busy = max(0, busy - 1); touch(now: now) }
    /// Keep awake until `untilMs` whatever else happens (`sandbox.keepalive`).
    public mutating func lease(until: Int64, now: Int64) {
        leaseUntilMs = max(leaseUntilMs ?? 0, until)
        touch(now: now)
    }
    /// A connected client asked to hold its sandboxes awake; released on disconnect.
    public mutating func hold() { holders += 1 }
    public mutating func release(now: Int64) { holders = max(0, holders - 1); touch(now: now) }

    public mutating func moved(to p: Phase, now: Int64) {
        phase = p
        if p == .running { touch(now: now) }
    }

    public func isIdle(now: Int64) -> Bool {
        busy == 0 && holders == 0 && (leaseUntilMs.map { now >= $0 } ?? true)
            && !(policy.backgroundKeepsAwake && backgroundProcesses && phase == .running)
    }

    /// Milliseconds the sandbox has been idle (0 when it is not).
    public func idleMs(now: Int64) -> Int64 {
        guard isIdle(now: now) else { return 0 }
        return max(0, now - max(lastActivityMs, leaseUntilMs ?? 0))
    }

    /// The action the policy asks for now, if any: the furthest one reached
    /// (a sandbox idle past both pause and hibernate hibernates directly).
    public func due(now: Int64) -> Action? {
        guard isIdle(now: now) else { return nil }
        let idle = idleMs(now: now)
        if let d = policy.deleteAfterMs, idle >= d { return .delete }
        if phase != .hibernated, let h = policy.hibernateAfterMs, idle >= h { return .hibernate }
        if phase == .running, let p = policy.pauseAfterMs, idle >= p { return .pause }
        return nil
    }

    /// When `due` would say delete if nothing happens before; nil when the
    /// policy never deletes, or while the sandbox is busy or held.
    public func deleteAt(now: Int64) -> Int64? {
        guard let d = policy.deleteAfterMs, isIdle(now: now) else { return nil }
        return max(lastActivityMs, leaseUntilMs ?? 0) + d
    }

    /// When `due` can next change without a new event (for the daemon's timer).
    public func nextDeadline(now: Int64) -> Int64? {
        guard isIdle(now: now) else { return leaseUntilMs.flatMap { $0 > now ? $0 : nil } }
        let since = max(lastActivityMs, leaseUntilMs ?? 0)
        var candidates: [Int64] = []
        if let d = policy.deleteAfterMs { candidates.append(since + d) }
        if phase != .hibernated, let h = policy.hibernateAfterMs { candidates.append(since + h) }
        if phase == .running, let p = policy.pauseAfterMs { candidates.append(since + p) }
        return candidates.filter { $0 > now }.min()
    }
}
