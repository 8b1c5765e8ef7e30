/// A sandbox policy: the limits a sandbox runs under. Files in `Policies/`
/// decode into this; unknown fields are rejected so typos never go unnoticed.
public struct Policy: Sendable, Equatable {
    public var name: String
    public var memoryBytes: Int64?
    public var pids: Int?
    public var cpuMillicores: Int?          // 1000 = one core
    public var tmpBytes: Int64
    public var execTimeoutMs: Int?          // default wall time per exec
    public var outputBytes: Int             // retained output per exec (head + tail)
    public var network: NetworkMode

    public enum NetworkMode: String, Sendable { case none }

    public init(name: String, memoryBytes: Int64? = 1 << 30, pids: Int? = 512, cpuMillicores: Int? = 1000,
                tmpBytes: Int64 = 256 << 20, execTimeoutMs: Int? = nil, outputBytes: Int = 16 << 20,
                network: NetworkMode = .none) {
        self.name = name
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpuMillicores = cpuMillicores
        self.tmpBytes = tmpBytes
        self.execTimeoutMs = execTimeoutMs
        self.outputBytes = outputBytes
        self.network = network
    }

    public static let builtinDefault = Policy(name: "default")

    static let knownKeys: Set<String> = ["name", "description", "memoryBytes", "pids", "cpuMillicores", "tmpBytes",
                                         "execTimeoutMs", "outputBytes", "network"]

    /// Decodes a policy document. `source` names the file in errors.
    public static func decode(_ value: JSONValue, source: String) throws(SandpitError) -> Policy {
        guard let o = value.objectValue else {
            throw SandpitError(.invalidParams, "\(source): a policy must be a JSON object")
        }
        for (k, _) in o where !knownKeys.contains(k) {
            throw SandpitError(.invalidParams, "\(source): unknown field \"\(k)\"", details: ["field": .string(k)])
        }
        func int(_ k: String) throws(SandpitError) -> Int64? {
            guard let v = o[k], v != .null else { return nil }
            guard let i = v.intValue, i > 0 else {
                throw SandpitError(.invalidParams, "\(source): \(k) must be a positive integer", details: ["field": .string(k)])
            }
            return i
        }
        guard let name = o["name"]?.stringValue, !name.isEmpty else {
            throw SandpitError(.invalidParams, "\(source): name must be a non-empty string", details: ["field": "name"])
        }
        var p = Policy(name: name)
        p.memoryBytes = try int("memoryBytes")
        p.pids = try int("pids").map { Int($0) }
        p.cpuMillicores = try int("cpuMillicores").map { Int($0) }
        p.tmpBytes = try int("tmpBytes") ?? p.tmpBytes
        p.execTimeoutMs = try int("execTimeoutMs").map { Int($0) }
        p.outputBytes = Int(try int("outputBytes") ?? Int64(p.outputBytes))
        if let n = o["network"] {
            guard let s = n.stringValue, let m = NetworkMode(rawValue: s) else {
                throw SandpitError(.invalidParams, "\(source): network must be \"none\"", details: ["field": "network"])
            }
            p.network = m
        }
        return p
    }

    public var json: JSONValue {
        var o: JSONObject = ["name": .string(name)]
        o["memoryBytes"] = memoryBytes.map { .int($0) } ?? .null
        o["pids"] = pids.map { .int(Int64($0)) } ?? .null
        o["cpuMillicores"] = cpuMillicores.map { .int(Int64($0)) } ?? .null
        o["tmpBytes"] = .int(tmpBytes)
        o["execTimeoutMs"] = execTimeoutMs.map { .int(Int64($0)) } ?? .null
        o["outputBytes"] = .int(Int64(outputBytes))
        o["network"] = .string(network.rawValue)
        return .object(o)
    }
}
