/// Sandbox lifecycle states, as on the wire.
public enum SandboxState: String, Sendable, CaseIterable {
    case starting, running, paused, hibernated, stopped, deleted

    /// States in which the sandbox has live processes.
    public var isLive: Bool { self == .starting || self == .running || self == .paused }
}

/// Who is asking. A client sees and touches only the sandboxes it created
/// (same uid) unless it is an admin (the daemon's owner, or it presented the
/// admin token).
public struct Caller: Sendable, Equatable {
    public var uid: Int64        // -1 = in-process
    public var admin: Bool
    public init(uid: Int64, admin: Bool) {
        self.uid = uid
        self.admin = admin
    }
    public static let inProcess = Caller(uid: -1, admin: true)

    public func owns(_ r: SandboxRecord) -> Bool { admin || r.owner == uid }
}

/// The catalog's record of a sandbox.
public struct SandboxRecord: Sendable, Equatable {
    public var id: String
    public var state: SandboxState
    public var template: String
    public var policy: String
    public var metadata: [String: String]
    public var createdAt: Int64      // ms since the epoch
    public var lastActiveAt: Int64
    public var step: Int
    public var execSeq: Int
    public var owner: Int64          // uid of the client that created it (-1 = in-process)
    public var stateReason: String?
    public var head: String?         // the checkpoint the files were last saved as or restored from
    public var templateId: String    // the exact template it was created from ("default" for the built-in one)

    /// Marked keep (metadata `"sandpit.keep": "true"`): idle deletion never
    /// removes it (or its checkpoints); it is hibernated instead.
    public var keep: Bool { metadata["sandpit.keep"] == "true" }

    public init(id: String, state: SandboxState, template: String, policy: String, metadata: [String: String],
                createdAt: Int64, lastActiveAt: Int64, step: Int = 0, execSeq: Int = 0, owner: Int64 = -1,
                stateReason: String? = nil, head: String? = nil, templateId: String = "default") {
        self.id = id
        self.templateId = templateId
        self.state = state
        self.template = template
        self.policy = policy
        self.metadata = metadata
        self.createdAt = createdAt
        self.lastActiveAt = lastActiveAt
        self.step = step
        self.execSeq = execSeq
        self.owner = owner
        self.stateReason = stateReason
        self.head = head
    }

    public var json: JSONValue {
        var meta = JSONObject()
        for k in metadata.keys.sorted() { meta[k] = .string(metadata[k]!) }
        var o: JSONObject = [
            "sandboxId": .string(id),
            "state": .string(state.rawValue),
            "template": .string(template),
            "templateId": .string(templateId),
            "policy": .string(policy),
            "createdAt": .string(Timestamp.iso8601(ms: createdAt)),
            "lastActiveAt": .string(Timestamp.iso8601(ms: lastActiveAt)),
            "step": .int(Int64(step)),
            "metadata": .object(meta),
        ]
        if let r = stateReason { o["stateReason"] = .string(r) }
        if let h = head { o["checkpointId"] = .string(h) }
        return .object(o)
    }
}

public enum ExecState: String, Sendable {
    case running, exited, failed, lost
}

/// The catalog's record of one exec.
public struct ExecRecord: Sendable, Equatable {
    public var sandboxId: String
    public var execId: String
    public var command: [String]
    public var state: ExecState
    public var exitCode: Int?
    public var signal: Int?
    public var timedOut: Bool
    public var startedAt: Int64
    public var endedAt: Int64?
    public var stdoutBytes: Int64
    public var stderrBytes: Int64

    public init(sandboxId: String, execId: String, command: [String], state: ExecState, exitCode: Int? = nil,
                signal: Int? = nil, timedOut: Bool = false, startedAt: Int64, endedAt: Int64? = nil,
                stdoutBytes: Int64 = 0, stderrBytes: Int64 = 0) {
        self.sandboxId = sandboxId
        self.execId = execId
        self.command = command
        self.state = state
        self.exitCode = exitCode
        self.signal = signal
        self.timedOut = timedOut
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.stdoutBytes = stdoutBytes
        self.stderrBytes = stderrBytes
    }
}

public enum OutputStream: String, Sendable {
    case stdout, stderr
    /// A PTY exec's terminal: its stdout and stderr, as one stream of raw bytes.
    case pty
    /// Input typed into a PTY exec (`exec.input`), kept in its log so a session can be replayed.
    case stdin
}

/// One piece of an exec's output, numbered per exec from 0.
public struct OutputChunk: Sendable, Equatable {
    public var seq: Int
    public var stream: OutputStream
    public var bytes: [UInt8]

    public init(seq: Int, stream: OutputStream, bytes: [UInt8]) {
        self.seq = seq
        self.stream = stream
        self.bytes = bytes
    }

    /// The head and tail of `chunks` within `maxBytes` (half each; chunks at
    /// the seams are cut), and how many bytes were left out of the middle.
    public static func headAndTail(_ chunks: [OutputChunk], maxBytes: Int) -> ([OutputChunk], omitted: Int) {
        let total = chunks.reduce(0) { $0 + $1.bytes.count }
        guard total > maxBytes else { return (chunks, 0) }
        var head: [OutputChunk] = [], tail: [OutputChunk] = []
        var room = maxBytes / 2
        for c in chunks where room > 0 {
            var k = c
            k.bytes = Array(c.bytes.prefix(room))
            room -= k.bytes.count
            head.append(k)
        }
        room = maxBytes - maxBytes / 2
        for c in chunks.reversed() where room > 0 {
            var k = c
            k.bytes = Array(c.bytes.suffix(room))
            room -= k.bytes.count
            tail.insert(k, at: 0)
        }
        return (head + tail, total - maxBytes)
    }

    /// Text when the bytes are valid UTF-8, else base64 with `encoding`.
    public func wireFields() -> (data: String, encoding: String?) {
        if let s = String(validating: bytes, as: UTF8.self) { return (s, nil) }
        return (Base64.encode(bytes), "base64")
    }
}

public enum Timestamp {
    /// ms since the epoch of an RFC 3339 UTC time as `iso8601` writes it
    /// (`2026-12-07T08:00:00.000Z`; the fraction is optional).
    public static func parseMs(_ s: String) -> Int64? {
        let b = Array(s.utf8)
        guard b.count >= 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T"), b.last == UInt8(ascii: "Z") else { return nil }
        func num(_ from: Int, _ len: Int) -> Int? {
            var v = 0
            for i in from..<(from + len) {
                guard i < b.count, b[i] >= 48, b[i] <= 57 else { return nil }
                v = v * 10 + Int(b[i] - 48)
            }
            return v
        }
        guard var y = num(0, 4), let m = num(5, 2), let d = num(8, 2), let hh = num(11, 2), let mm = num(14, 2), let ss = num(17, 2) else { return nil }
        var millis = 0
        if b.count >= 24, b[19] == UInt8(ascii: "."), let f = num(20, 3) { millis = f }
        // Days-from-civil (Howard Hinnant's algorithm), the inverse of iso8601's.
        if m <= 2 { y -= 1 }
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146097 + doe - 719468
        return (Int64(days) * 86400 + Int64(hh * 3600 + mm * 60 + ss)) * 1000 + Int64(millis)
    }

    /// RFC 3339 UTC with milliseconds, from ms since the epoch.
    public static func iso8601(ms: Int64) -> String {
        let secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000
        let millis = Int(ms - secs * 1000)
        var days = Int(secs / 86400)
        var rem = Int(secs % 86400)
        if rem < 0 { rem += 86400; days -= 1 }
        // Civil-from-days (Howard Hinnant's algorithm).
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        var y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        if m <= 2 { y += 1 }
        func p(_ v: Int, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
        return "\(p(y, 4))-\(p(m, 2))-\(p(d, 2))T\(p(rem / 3600, 2)):\(p(rem / 60 % 60, 2)):\(p(rem % 60, 2)).\(p(millis, 3))Z"
    }
}

public enum Base64 {
    static let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    /// Byte → 6-bit value; 0x40 for `=`, 0x41 for CR/LF (skipped), 0xFF for anything else.
    static let reverse: [UInt8] = {
        var r = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in table.enumerated() { r[Int(c)] = UInt8(i) }
        r[Int(UInt8(ascii: "="))] = 0x40
        r[10] = 0x41
        r[13] = 0x41
        return r
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        let n = bytes.count
        let outCount = (n + 2) / 3 * 4
        guard outCount > 0 else { return "" }
        return bytes.withUnsafeBufferPointer { src in
            table.withUnsafeBufferPointer { t in
                String(unsafeUninitializedCapacity: outCount) { out in
                    var i = 0, o = 0
                    while i + 3 <= n {
                        let v = UInt32(src[i]) << 16 | UInt32(src[i + 1]) << 8 | UInt32(src[i + 2])
                        out[o] = t[Int(v >> 18 & 63)]
                        out[o + 1] = t[Int(v >> 12 & 63)]
                        out[o + 2] = t[Int(v >> 6 & 63)]
                        out[o + 3] = t[Int(v & 63)]
                        i += 3
                        o += 4
                    }
                    if n - i > 0 {
                        let v = UInt32(src[i]) << 16 | (n - i == 2 ? UInt32(src[i + 1]) << 8 : 0)
                        out[o] = t[Int(v >> 18 & 63)]
                        out[o + 1] = t[Int(v >> 12 & 63)]
                        out[o + 2] = n - i == 2 ? t[Int(v >> 6 & 63)] : UInt8(ascii: "=")
                        out[o + 3] = UInt8(ascii: "=")
                        o += 4
                    }
                    return o
                }
            }
        }
    }

    /// Decodes standard base64 (padding optional, CR/LF ignored); nil on anything else.
    public static func decode(_ s: String) -> [UInt8]? {
        var s = s
        return s.withUTF8 { src -> [UInt8]? in
            reverse.withUnsafeBufferPointer { r -> [UInt8]? in
                var failed = false
                let out = [UInt8](unsafeUninitializedCapacity: src.count / 4 * 3 + 3) { buf, count in
                    var acc: UInt32 = 0, bits = 0, pad = 0, o = 0
                    for c in src {
                        let v = r[Int(c)]
                        if v < 64 {
                            if pad > 0 { failed = true; break }
                            acc = acc << 6 | UInt32(v)
                            bits += 6
                            if bits >= 8 {
                                bits -= 8
                                buf[o] = UInt8(truncatingIfNeeded: acc >> UInt32(bits))
                                o += 1
                            }
                        } else if v == 0x40 {
                            pad += 1
                        } else if v != 0x41 {
                            failed = true
                            break
                        }
                    }
                    if pad > 2 { failed = true }
                    count = o
                }
                return failed ? nil : out
            }
        }
    }
}
