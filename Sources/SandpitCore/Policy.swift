/// A sandbox policy: the limits and barriers a sandbox runs under. Files in
/// `Policies/` decode into this; unknown fields are rejected with the file and
/// field named, so typos never go unnoticed. `nil` means "no limit".
public struct Policy: Sendable, Equatable {
    public var name: String
    public var description: String = ""
    /// What the policy may be used for: agent sandboxes, or template builds only.
    public var purpose: Purpose = .sandbox

    public var memoryBytes: Int64? = 1 << 30
    public var pids: Int64? = 512
    public var cpuMillicores: Int64? = 1000         // 1000 = one core
    public var openFiles: Int64? = 4096             // RLIMIT_NOFILE of every command
    public var diskBytes: Int64? = 4 << 30          // the sandbox's writable layer
    public var diskInodes: Int64? = 262_144
    public var tmpBytes: Int64? = 256 << 20         // tmpfs /tmp (counts against memory)
    public var execTimeoutMs: Int64?                // default wall time per exec
    public var sandboxTimeoutMs: Int64?             // wall time of the whole sandbox, from creation
    public var outputBytes: Int64? = 16 << 20       // retained output per exec (head + tail)
    /// Command output the sandbox may send per second, all its commands
    /// together (a second's worth may come at once): past it their pipes
    /// wait, so a flood costs neither its CPU nor the daemon's.
    public var outputBytesPerSecond: Int64? = 32 << 20
    /// The store a sandbox's checkpoints may hold, counted as the bytes of
    /// the files each one changed (its `bytes`); see `checkpointQuota`.
    public var checkpointBytes: Int64? = 16 << 30
    /// What happens when a new checkpoint would take a sandbox past `checkpointBytes`.
    public var checkpointQuota: CheckpointQuota = .prune
    public var network: NetworkMode = .none
    /// For `allowlist`: `host:port` entries (`*.example.org:443`, `127.0.0.1:8000`); port `*` for any.
    public var allow: [String] = []
    public var seccomp: Bool = true
    public var socketFamilies: SocketFamilies = .inet
    /// Off only for benchmarks that measure what the barriers cost.
    public var cgroup: Bool = true
    /// When the daemon checkpoints the sandbox's files (needs `diskBytes`).
    public var checkpoints: CheckpointMode = .everyStep
    /// Frozen copy-on-write copies of each Python context's interpreter kept
    /// after its last cells, so a restore to one of those steps brings the
    /// variables back with the files (0: none). They count against `memoryBytes` and `pids`.
    public var interpreterSnapshots: Int64 = 8
    /// Idle lifecycle defaults, and the longest values a client may ask for.
    public var idle = IdlePolicy(pauseAfterMs: 300_000, hibernateAfterMs: 1_800_000, deleteAfterMs: IdlePolicy.defaultRetentionMs, backgroundKeepsAwake: true)

    public enum Purpose: String, Sendable, CaseIterable { case sandbox, build }
    public enum CheckpointQuota: String, Sendable, CaseIterable {
        /// Delete the oldest checkpoints without a name (never the head) until it fits.
        case prune
        /// Keep the older ones; the new checkpoint is not taken (`limit_exceeded`).
        case refuse
    }
    public enum NetworkMode: String, Sendable, CaseIterable {
        case none        // loopback only
        case allowlist   // egress only through the daemon's proxy, to listed hosts
        case host        // the host's network (template builds only)
    }
    public enum SocketFamilies: String, Sendable, CaseIterable {
        case inet        // AF_UNIX, AF_INET, AF_INET6
        case any
    }

    public init(name: String, description: String = "") {
        self.name = name
        self.description = description
    }

    public static let builtinDefault = Policy(name: "default", description: "built-in default")

    /// The numeric limits, by wire name. Smaller is tighter for every one.
    public static let limitKeys: [String] = ["memoryBytes", "pids", "cpuMillicores", "openFiles", "diskBytes", "diskInodes",
                                             "tmpBytes", "execTimeoutMs", "sandboxTimeoutMs", "outputBytes", "outputBytesPerSecond",
                                             "checkpointBytes"]

    subscript(limit key: String) -> Int64? {
        get {
            switch key {
            case "memoryBytes": memoryBytes
            case "pids": pids
            case "cpuMillicores": cpuMillicores
            case "openFiles": openFiles
            case "diskBytes": diskBytes
            case "diskInodes": diskInodes
            case "tmpBytes": tmpBytes
            case "execTimeoutMs": execTimeoutMs
            case "sandboxTimeoutMs": sandboxTimeoutMs
            case "outputBytes": outputBytes
            case "outputBytesPerSecond": outputBytesPerSecond
            case "checkpointBytes": checkpointBytes
            default: nil
            }
        }
        set {
            switch key {
            case "memoryBytes": memoryBytes = newValue
            case "pids": pids = newValue
            case "cpuMillicores": cpuMillicores = newValue
            case "openFiles": openFiles = newValue
            case "diskBytes": diskBytes = newValue
            case "diskInodes": diskInodes = newValue
            case "tmpBytes": tmpBytes = newValue
            case "execTimeoutMs": execTimeoutMs = newValue
            case "sandboxTimeoutMs": sandboxTimeoutMs = newValue
            case "outputBytes": outputBytes = newValue
            case "outputBytesPerSecond": outputBytesPerSecond = newValue
            case "checkpointBytes": checkpointBytes = newValue
            default: break
            }
        }
    }

    /// The most frozen interpreter copies a policy may keep per context.
    public static let maxInterpreterSnapshots: Int64 = 64

    /// Smallest sane value of each limit: below these a sandbox cannot start.
    static let minimums: [String: Int64] = [
        "memoryBytes": 16 << 20, "pids": 8, "cpuMillicores": 10, "openFiles": 16, "diskBytes": 16 << 20,
        "diskInodes": 1024, "tmpBytes": 1 << 20, "execTimeoutMs": 1, "sandboxTimeoutMs": 1000, "outputBytes": 1024,
        "checkpointBytes": 1 << 20, "outputBytesPerSecond": 64 << 10,
    ]

    static let knownKeys: Set<String> = Set(limitKeys).union(["name", "description", "purpose", "network", "allow", "seccomp",
                                                              "socketFamilies", "cgroup", "checkpoints", "checkpointQuota", "idle",
                                                              "interpreterSnapshots"])

    /// Decodes a policy document. `source` names the file in errors. A limit
    /// given as `null` is unlimited; an absent one keeps the built-in default.
    public static func decode(_ value: JSONValue, source: String) throws(SandpitError) -> Policy {
        guard let o = value.objectValue else {
            throw SandpitError(.invalidParams, "\(source): a policy must be a JSON object")
        }
        func fail(_ field: String, _ why: String) -> SandpitError {
            SandpitError(.invalidParams, "\(source): \(field) \(why)", details: ["field": .string(field)])
        }
        for (k, _) in o where !knownKeys.contains(k) {
            throw SandpitError(.invalidParams, "\(source): unknown field \"\(k)\"", details: ["field": .string(k)])
        }
        guard let name = o["name"]?.stringValue, !name.isEmpty else { throw fail("name", "must be a non-empty string") }
        var p = Policy(name: name)
        if let d = o["description"] {
            guard let s = d.stringValue else { throw fail("description", "must be a string") }
            p.description = s
        }
        for k in limitKeys {
            guard let v = o[k] else { continue }
            if v == .null {
                // Retained output is always bounded, so the daemon's memory is too.
                guard k != "outputBytes" else { throw fail(k, "must be an integer ≥ 1024 (output is always bounded)") }
                p[limit: k] = nil
                continue
            }
            guard let i = v.intValue, i >= (minimums[k] ?? 1) else {
                throw fail(k, "must be null (no limit) or an integer ≥ \(minimums[k] ?? 1)")
            }
            p[limit: k] = i
        }
        func choice<E: RawRepresentable & CaseIterable>(_ k: String, _: E.Type) throws(SandpitError) -> E? where E.RawValue == String {
            guard let v = o[k] else { return nil }
            guard let s = v.stringValue, let e = E(rawValue: s) else {
                throw fail(k, "must be one of " + E.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))
            }
            return e
        }
        func flag(_ k: String) throws(SandpitError) -> Bool? {
            guard let v = o[k] else { return nil }
            guard case .bool(let b) = v else { throw fail(k, "must be true or false") }
            return b
        }
        p.purpose = try choice("purpose", Purpose.self) ?? p.purpose
        p.network = try choice("network", NetworkMode.self) ?? p.network
        p.socketFamilies = try choice("socketFamilies", SocketFamilies.self) ?? p.socketFamilies
        p.checkpoints = try choice("checkpoints", CheckpointMode.self) ?? p.checkpoints
        p.checkpointQuota = try choice("checkpointQuota", CheckpointQuota.self) ?? p.checkpointQuota
        if let v = o["interpreterSnapshots"] {
            guard let n = v.intValue, (0...Self.maxInterpreterSnapshots).contains(n) else {
                throw fail("interpreterSnapshots", "must be an integer from 0 to \(Self.maxInterpreterSnapshots)")
            }
            p.interpreterSnapshots = n
        }
        if let i = o["idle"] {
            guard let io = i.objectValue else { throw fail("idle", "must be an object") }
            for (k, _) in io where !["pauseAfterMs", "hibernateAfterMs", "deleteAfterMs", "backgroundKeepsAwake"].contains(k) {
                throw fail("idle.\(k)", "is not a known field")
            }
            func ms(_ k: String, _ current: Int64?) throws(SandpitError) -> Int64? {
                guard let v = io[k] else { return current }
                if v == .null { return nil }
                guard let n = v.intValue, n >= 0 else { throw fail("idle.\(k)", "must be null (never) or milliseconds ≥ 0") }
                return n
            }
            p.idle.pauseAfterMs = try ms("pauseAfterMs", p.idle.pauseAfterMs)
            p.idle.hibernateAfterMs = try ms("hibernateAfterMs", p.idle.hibernateAfterMs)
            p.idle.deleteAfterMs = try ms("deleteAfterMs", p.idle.deleteAfterMs)
            if let b = io["backgroundKeepsAwake"] {
                guard case .bool(let v) = b else { throw fail("idle.backgroundKeepsAwake", "must be true or false") }
                p.idle.backgroundKeepsAwake = v
            }
        }
        p.seccomp = try flag("seccomp") ?? p.seccomp
        p.cgroup = try flag("cgroup") ?? p.cgroup
        if let a = o["allow"] {
            guard let arr = a.arrayValue else { throw fail("allow", "must be a list of \"host:port\" strings") }
            for (i, e) in arr.enumerated() {
                guard let s = e.stringValue, AllowRule(s) != nil else { throw fail("allow[\(i)]", "must be \"host:port\" (port a number or *)") }
                p.allow.append(s)
            }
        }
        if p.network == .host && p.purpose != .build {
            throw fail("network", "\"host\" is only for build policies (\"purpose\": \"build\")")
        }
        if p.network == .allowlist && p.allow.isEmpty { throw fail("allow", "must list at least one host for network \"allowlist\"") }
        if p.network != .allowlist && !p.allow.isEmpty { throw fail("allow", "is only meaningful with network \"allowlist\"") }
        if p.checkpoints != .off && p.diskBytes == nil { throw fail("checkpoints", "needs a sandbox disk (diskBytes); set \"off\" with diskBytes null") }
        return p
    }

    /// This policy narrowed by a client's `limits` request. Each value must be
    /// at most the policy's own (a limit the policy leaves open accepts any);
    /// asking for more than the operator allows is `permission_denied`.
    public func tightened(by request: JSONObject) throws(SandpitError) -> Policy {
        var p = self
        for (k, v) in request {
            if Self.limitKeys.contains(k) {
                let current = self[limit: k]
                guard let i = v.intValue, i >= (Self.minimums[k] ?? 1) else {
                    throw SandpitError.invalidParams("limits.\(k)", "must be an integer ≥ \(Self.minimums[k] ?? 1)")
                }
                if let c = current, i > c {
                    throw SandpitError(.permissionDenied, "limits.\(k) = \(i) is looser than policy \(name) allows (\(c))",
                                       details: ["field": .string("limits.\(k)"), "allowed": .int(c)])
                }
                p[limit: k] = i
                continue
            }
            switch k {
            case "network":
                guard let s = v.stringValue, let m = NetworkMode(rawValue: s) else {
                    throw SandpitError.invalidParams("limits.network", "must be \"none\", \"allowlist\" or \"host\"")
                }
                if m == network { continue }
                guard m == .none else {
                    throw SandpitError(.permissionDenied, "limits.network = \(s) is looser than policy \(name) allows (\(network.rawValue))",
                                       details: ["field": "limits.network"])
                }
                p.network = .none
                p.allow = []
            case "interpreterSnapshots":
                guard let n = v.intValue, n >= 0 else { throw SandpitError.invalidParams("limits.interpreterSnapshots", "must be an integer ≥ 0") }
                if n > interpreterSnapshots {
                    throw SandpitError(.permissionDenied, "limits.interpreterSnapshots = \(n) is looser than policy \(name) allows (\(interpreterSnapshots))",
                                       details: ["field": "limits.interpreterSnapshots", "allowed": .int(interpreterSnapshots)])
                }
                p.interpreterSnapshots = n
            case "checkpoints":
                // Any mode is allowed: checkpoints cost the sandbox's own disk only.
                guard let s = v.stringValue, let m = CheckpointMode(rawValue: s) else {
                    throw SandpitError.invalidParams("limits.checkpoints", "must be \"every-step\", \"manual\" or \"off\"")
                }
                p.checkpoints = m
            case "checkpointQuota":
                // Either is allowed: it decides only which of the sandbox's own checkpoints stay.
                guard let s = v.stringValue, let q = CheckpointQuota(rawValue: s) else {
                    throw SandpitError.invalidParams("limits.checkpointQuota", "must be \"prune\" or \"refuse\"")
                }
                p.checkpointQuota = q
            case "allow":
                guard let arr = v.arrayValue?.compactMap(\.stringValue), arr.count == v.arrayValue?.count else {
                    throw SandpitError.invalidParams("limits.allow", "must be a list of \"host:port\" strings")
                }
                for e in arr where !allow.contains(e) {
                    throw SandpitError(.permissionDenied, "limits.allow: \(e) is not in policy \(name)'s allowlist",
                                       details: ["field": "limits.allow"])
                }
                p.allow = arr
                if arr.isEmpty { p.network = .none }
            default:
                throw SandpitError.invalidParams("limits.\(k)", "unknown limit (known: \((Self.limitKeys + ["network", "allow", "checkpoints", "checkpointQuota", "interpreterSnapshots"]).joined(separator: ", ")))")
            }
        }
        return p
    }

    /// The policy's idle settings narrowed by a client's `idle` request: each
    /// value at most the policy's (a value the policy leaves null, "never",
    /// accepts any); longer is `permission_denied`.
    public func idle(narrowedBy request: JSONObject) throws(SandpitError) -> IdlePolicy {
        var out = idle
        for (k, v) in request {
            let current: Int64?
            switch k {
            case "pauseAfterMs": current = idle.pauseAfterMs
            case "hibernateAfterMs": current = idle.hibernateAfterMs
            case "deleteAfterMs": current = idle.deleteAfterMs
            default: throw SandpitError.invalidParams("idle.\(k)", "unknown field (known: pauseAfterMs, hibernateAfterMs, deleteAfterMs)")
            }
            let asked: Int64?
            if v == .null { asked = nil } else {
                guard let n = v.intValue, n >= 0 else { throw SandpitError.invalidParams("idle.\(k)", "must be null or milliseconds ≥ 0") }
                asked = n
            }
            if let c = current, asked.map({ $0 > c }) ?? true {
                throw SandpitError(.permissionDenied, "idle.\(k) = \(asked.map(String.init) ?? "null") is longer than policy \(name) allows (\(c))",
                                   details: ["field": .string("idle.\(k)"), "allowed": .int(c)])
            }
            switch k {
            case "pauseAfterMs": out.pauseAfterMs = asked
            case "hibernateAfterMs": out.hibernateAfterMs = asked
            default: out.deleteAfterMs = asked
            }
        }
        return out
    }

    public var json: JSONValue {
        var o: JSONObject = ["name": .string(name)]
        if !description.isEmpty { o["description"] = .string(description) }
        o["purpose"] = .string(purpose.rawValue)
        for k in Self.limitKeys { o[k] = self[limit: k].map { .int($0) } ?? .null }
        o["network"] = .string(network.rawValue)
        if !allow.isEmpty { o["allow"] = .array(allow.map { .string($0) }) }
        o["seccomp"] = .bool(seccomp)
        o["socketFamilies"] = .string(socketFamilies.rawValue)
        o["cgroup"] = .bool(cgroup)
        o["checkpoints"] = .string(checkpoints.rawValue)
        o["checkpointQuota"] = .string(checkpointQuota.rawValue)
        o["interpreterSnapshots"] = .int(interpreterSnapshots)
        o["idle"] = idle.json
        return .object(o)
    }
}

/// One `host:port` allowlist entry. `*.example.org` matches subdomains only;
/// port `*` matches any port.
public struct AllowRule: Sendable, Equatable {
    public var host: String
    public var port: Int?

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        let h = text[..<colon].lowercased(), p = text[text.index(after: colon)...]
        guard !h.isEmpty, h.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "*" }) else { return nil }
        if h.contains("*") && !(h.hasPrefix("*.") && h.dropFirst(2).allSatisfy { $0 != "*" }) { return nil }
        if p == "*" { port = nil } else if let n = Int(p), (1...65535).contains(n) { port = n } else { return nil }
        host = h
    }

    public func matches(host candidate: String, port candidatePort: Int) -> Bool {
        if let port, port != candidatePort { return false }
        let c = candidate.lowercased()
        if host.hasPrefix("*.") { return c.hasSuffix(host.dropFirst(1)) && c.count > host.count - 1 }
        return c == host
    }
}
