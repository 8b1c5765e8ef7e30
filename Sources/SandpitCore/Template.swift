/// What a template's sandboxes start from besides its files: the root the
/// layers sit on, and the defaults every command gets (from ENV, WORKDIR, USER).
public struct ImageConfig: Sendable, Equatable {
    public enum Base: String, Sendable {
        /// The `default` template's small root, with the host's /usr mounted read-only.
        case host
        /// A self-contained root filesystem (from a tarball or an OCI image); no host /usr.
        case rootfs
    }

    public var base: Base
    public var env: [String: String]
    public var workdir: String
    public var user: String
    public var uid: UInt32
    public var gid: UInt32
    /// HOME for commands (the user's home in the template's /etc/passwd).
    public var home: String
    /// Python modules every interpreter context of the template imports before
    /// its first cell (`PRELOAD`); the daemon keeps such sandboxes warm.
    public var preload: [String] = []

    public init(base: Base = .host, env: [String: String] = [:], workdir: String = "/home/user", user: String = "user",
                uid: UInt32 = 1000, gid: UInt32 = 1000, home: String = "/home/user") {
        self.home = home
        self.base = base
        self.env = env
        self.workdir = workdir
        self.user = user
        self.uid = uid
        self.gid = gid
    }

    public static let `default` = ImageConfig()

    public var json: JSONValue {
        var env = JSONObject()
        for k in self.env.keys.sorted() { env[k] = .string(self.env[k]!) }
        var o: JSONObject = ["base": .string(base.rawValue), "env": .object(env), "workdir": .string(workdir), "user": .string(user),
                             "uid": .int(Int64(uid)), "gid": .int(Int64(gid)), "home": .string(home)]
        if !preload.isEmpty { o["preload"] = .array(preload.map { .string($0) }) }
        return .object(o)
    }

    public init?(json v: JSONValue) {
        guard let base = v["base"]?.stringValue.flatMap(Base.init(rawValue:)) else { return nil }
        var env: [String: String] = [:]
        for (k, x) in v["env"]?.objectValue ?? [:] { env[k] = x.stringValue ?? "" }
        self.init(base: base, env: env, workdir: v["workdir"]?.stringValue ?? "/home/user", user: v["user"]?.stringValue ?? "user",
                  uid: UInt32(clamping: v["uid"]?.intValue ?? 1000), gid: UInt32(clamping: v["gid"]?.intValue ?? 1000),
                  home: v["home"]?.stringValue ?? "/home/user")
        preload = (v["preload"]?.arrayValue ?? []).compactMap(\.stringValue).filter(Self.isModuleName)
    }

    /// A dotted Python module name (`numpy`, `matplotlib.pyplot`).
    public static func isModuleName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 200 && s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { part in
            guard let f = part.first, f.isASCII, f.isLetter || f == "_" else { return false }
            return part.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
        }
    }

    /// Resolves a `USER` argument (`name`, `uid`, `name:group`, `uid:gid`)
    /// against the template's /etc/passwd and /etc/group texts.
    public static func resolveUser(_ spec: String, passwd: String, group: String) -> (uid: UInt32, gid: UInt32, home: String)? {
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        func table(_ text: String) -> [(name: String, id: UInt32, gid: UInt32?, home: String?)] {
            text.split(separator: "\n").compactMap { line in
                let f = line.split(separator: ":", omittingEmptySubsequences: false)
                guard f.count >= 3, let id = UInt32(f[2]) else { return nil }
                return (String(f[0]), id, f.count >= 4 ? UInt32(f[3]) : nil, f.count >= 6 ? String(f[5]) : nil)
            }
        }
        let users = table(passwd), groups = table(group)
        var uid: UInt32, gid: UInt32, home: String
        if let n = UInt32(parts[0]) {
            uid = n
            gid = users.first { $0.id == n }?.gid ?? n
            home = users.first { $0.id == n }?.home ?? (n == 0 ? "/root" : "/")
        } else if let u = users.first(where: { $0.name == parts[0] }) {
            uid = u.id
            gid = u.gid ?? u.id
            home = u.home ?? "/"
        } else { return nil }
        if parts.count == 2 {
            if let n = UInt32(parts[1]) { gid = n } else if let g = groups.first(where: { $0.name == parts[1] }) { gid = g.id } else { return nil }
        }
        guard uid < 65_536, gid < 65_536 else { return nil }
        return (uid, gid, home)
    }
}

/// One content-addressed layer: the files one build instruction changed.
public struct LayerRecord: Sendable, Equatable {
    /// sha256 of the parent's key and the instruction (plus the content it copies).
    public var key: String
    public var createdBy: String
    public var bytes: Int64
    public var createdAt: Int64

    public init(key: String, createdBy: String, bytes: Int64, createdAt: Int64) {
        self.key = key
        self.createdBy = createdBy
        self.bytes = bytes
        self.createdAt = createdAt
    }

    public var json: JSONValue {
        .object(["layerId": .string(key), "createdBy": .string(createdBy), "bytes": .int(bytes)])
    }
}

/// A built template: an immutable stack of layers and a config, known by `name:tag`.
public struct TemplateRecord: Sendable, Equatable {
    public var templateId: String
    public var name: String
    public var tag: String
    public var createdAt: Int64
    /// Layer keys, bottom first.
    public var layers: [String]
    public var bytes: Int64
    public var config: ImageConfig
    /// The template this one was built `FROM` (its id), if any.
    public var parent: String?
    /// Whose tag this is: a tenant's uid (only that tenant sees, uses and
    /// changes it), or `shared` for templates an admin built, which every
    /// tenant may use and only an admin may change.
    public var owner: Int64 = TemplateRecord.shared
    public static let shared: Int64 = -1

    public init(templateId: String, name: String, tag: String, createdAt: Int64, layers: [String], bytes: Int64,
                config: ImageConfig, parent: String?, owner: Int64 = TemplateRecord.shared) {
        self.owner = owner
        self.templateId = templateId
        self.name = name
        self.tag = tag
        self.createdAt = createdAt
        self.layers = layers
        self.bytes = bytes
        self.config = config
        self.parent = parent
    }

    public var reference: String { name + ":" + tag }

    public var isBuiltin: Bool { templateId == Self.builtin.templateId }

    /// How sandboxes and listings name it: `default` for the built-in one, else `name:tag`.
    public var displayName: String { isBuiltin ? "default" : reference }

    /// The built-in `default` template (the host's /usr and a generated /etc).
    public static let builtin = TemplateRecord(templateId: "default", name: "default", tag: "latest", createdAt: 0, layers: [],
                                               bytes: 0, config: .default, parent: nil)
}

public enum TemplateRef {
    /// `name` or `name:tag` (tag `latest` when absent), validated.
    public static func parse(_ s: String, field: String = "template") throws(SandpitError) -> (name: String, tag: String) {
        let parts = s.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let name = parts[0], tag = parts.count == 2 ? parts[1] : "latest"
        guard TemplateName.isValid(name), TemplateName.isValid(tag) else {
            throw SandpitError(.invalidParams,
                               "\(field) \"\(s)\" is not NAME[:TAG] (lower-case letters, digits, '.', '_', '-'; up to 64 each)",
                               details: ["field": .string(field)])
        }
        return (name, tag)
    }
}
