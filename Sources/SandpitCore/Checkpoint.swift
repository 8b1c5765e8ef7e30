/// One entry of a sandbox's writable layer, as a checkpoint records it.
public struct FileMeta: Sendable, Equatable {
    public enum Kind: UInt8, Sendable { case file, dir, symlink, whiteout, other }
    public var kind: Kind
    public var mode: UInt32
    public var ino: UInt64
    public var size: Int64
    public var mtimeNs: Int64
    public var ctimeNs: Int64

    public init(kind: Kind, mode: UInt32, ino: UInt64, size: Int64, mtimeNs: Int64, ctimeNs: Int64) {
        self.kind = kind
        self.mode = mode
        self.ino = ino
        self.size = size
        self.mtimeNs = mtimeNs
        self.ctimeNs = ctimeNs
    }
}

/// The writable layer's entries by path (relative, `/`-separated). Overlay
/// whiteouts (deleted template files) appear as `.whiteout` entries.
public struct Manifest: Sendable, Equatable {
    public var entries: [String: FileMeta]
    public init(_ entries: [String: FileMeta] = [:]) { self.entries = entries }

    /// One line per entry: `kind mode ino size mtime ctime path`, the path
    /// last with `\` and newline escaped, so any name round-trips.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        for (p, m) in entries.sorted(by: { $0.key < $1.key }) {
            out += Array("\(m.kind.rawValue) \(m.mode) \(m.ino) \(m.size) \(m.mtimeNs) \(m.ctimeNs) ".utf8)
            for b in p.utf8 {
                switch b {
                case UInt8(ascii: "\\"): out += [92, 92]
                case 10: out += [92, 110]
                default: out.append(b)
                }
            }
            out.append(10)
        }
        return out
    }

    public static func decode(_ bytes: [UInt8]) -> Manifest? {
        var m = Manifest()
        for line in bytes.split(separator: 10) {
            let parts = line.split(separator: 32, maxSplits: 6, omittingEmptySubsequences: false)
            guard parts.count == 7, let k = UInt8(String(decoding: parts[0], as: UTF8.self)), let kind = FileMeta.Kind(rawValue: k),
                  let mode = UInt32(String(decoding: parts[1], as: UTF8.self)), let ino = UInt64(String(decoding: parts[2], as: UTF8.self)),
                  let size = Int64(String(decoding: parts[3], as: UTF8.self)), let mt = Int64(String(decoding: parts[4], as: UTF8.self)),
                  let ct = Int64(String(decoding: parts[5], as: UTF8.self)) else { return nil }
            var path: [UInt8] = []
            var esc = false
            for b in parts[6] {
                if esc { path.append(b == 110 ? 10 : b); esc = false } else if b == 92 { esc = true } else { path.append(b) }
            }
            m.entries[String(decoding: path, as: UTF8.self)] = FileMeta(kind: kind, mode: mode, ino: ino, size: size, mtimeNs: mt, ctimeNs: ct)
        }
        return m
    }
}

/// What changed between two checkpoints, as the sandbox sees its files.
public struct CheckpointDiff: Sendable, Equatable {
    public var added: [String] = []
    public var modified: [String] = []
    public var deleted: [String] = []
    /// Bytes of regular files added or modified.
    public var bytes: Int64 = 0

    public static let shownPaths = 10

    public init() {}

    /// `inTemplate(p)` says whether the layers below the sandbox have `p`:
    /// then a first write of it is a modification and its whiteout a deletion.
    /// Directories count when they appear or vanish, not when their entries change.
    public static func compute(old: Manifest, new: Manifest, inTemplate: (String) -> Bool) -> CheckpointDiff {
        var d = CheckpointDiff()
        func visible(_ m: FileMeta?) -> FileMeta? { m.flatMap { $0.kind == .whiteout ? nil : $0 } }
        for (p, n) in new.entries {
            let o = old.entries[p]
            if n.kind == .whiteout {
                if o?.kind != .whiteout && (visible(o) != nil || inTemplate(p)) { d.deleted.append(p) }
                continue
            }
            if let ov = visible(o) {
                if n.kind == .dir && ov.kind == .dir { continue }
                if ov != n {
                    d.modified.append(p)
                    if n.kind == .file { d.bytes += n.size }
                }
            } else if inTemplate(p) {
                if n.kind != .dir {
                    d.modified.append(p)
                    if n.kind == .file { d.bytes += n.size }
                }
            } else {
                d.added.append(p)
                if n.kind == .file { d.bytes += n.size }
            }
        }
        for (p, o) in old.entries where new.entries[p] == nil {
            if o.kind == .whiteout {
                if inTemplate(p) { d.added.append(p) }   // the template's file is visible again
                continue
            }
            if inTemplate(p) { if o.kind != .dir { d.modified.append(p) } } else { d.deleted.append(p) }
        }
        d.added.sort()
        d.modified.sort()
        d.deleted.sort()
        return d
    }

    public var json: JSONValue {
        .object([
            "added": .int(Int64(added.count)), "modified": .int(Int64(modified.count)), "deleted": .int(Int64(deleted.count)),
            "paths": .object([
                "added": .array(added.prefix(Self.shownPaths).map { .string("/" + $0) }),
                "modified": .array(modified.prefix(Self.shownPaths).map { .string("/" + $0) }),
                "deleted": .array(deleted.prefix(Self.shownPaths).map { .string("/" + $0) }),
            ]),
        ])
    }
}

/// A checkpoint as the catalog keeps it.
public struct CheckpointRecord: Sendable, Equatable {
    public var id: String
    public var sandboxId: String
    public var step: Int
    public var name: String?
    public var parentId: String?
    public var createdAt: Int64
    public var diff: CheckpointDiff
    public var bytes: Int64

    public init(id: String, sandboxId: String, step: Int, name: String?, parentId: String?, createdAt: Int64, diff: CheckpointDiff, bytes: Int64) {
        self.id = id
        self.sandboxId = sandboxId
        self.step = step
        self.name = name
        self.parentId = parentId
        self.createdAt = createdAt
        self.diff = diff
        self.bytes = bytes
    }

    public var json: JSONValue {
        var o: JSONObject = ["checkpointId": .string(id), "sandboxId": .string(sandboxId), "step": .int(Int64(step))]
        if let name { o["name"] = .string(name) }
        o["parentId"] = parentId.map { .string($0) } ?? .null
        o["createdAt"] = .string(Timestamp.iso8601(ms: createdAt))
        o["diff"] = diff.json
        o["bytes"] = .int(bytes)
        return .object(o)
    }
}

/// How often a sandbox is checkpointed (policy `checkpoints`).
public enum CheckpointMode: String, Sendable, CaseIterable {
    case everyStep = "every-step"
    case manual
    case off
}
