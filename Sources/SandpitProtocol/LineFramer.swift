#if canImport(Glibc)
import Glibc
#endif

/// Splits a byte stream into `\n`-terminated lines of at most `maxLineBytes`.
/// A longer line is reported once as `.oversized` (with its first bytes, so its
/// request id can still be answered) and its remainder is skipped up to the
/// next newline, so one bad request never desynchronises the stream.
public struct LineFramer: Sendable {
    public enum Item: Sendable, Equatable {
        case line([UInt8])
        case oversized(Int, head: [UInt8])   // bytes seen before giving up on the line, and the first of them
    }

    /// How much of an oversized line is kept for `RPC.idOfTruncatedRequest`.
    public static let headBytes = 4096

    public let maxLineBytes: Int
    private var pending: [UInt8] = []
    private var discarding = false
    private var discarded = 0

    public init(maxLineBytes: Int) { self.maxLineBytes = maxLineBytes }

    public mutating func push<C: Collection<UInt8>>(_ bytes: C) -> [Item] {
        if let r = bytes.withContiguousStorageIfAvailable({ push(UnsafeRawBufferPointer($0)) }) { return r }
        return Array(bytes).withUnsafeBytes { push($0) }
    }

    /// Works on raw memory with `memchr` and bulk copies: requests carrying
    /// file chunks are megabytes long, and every byte passes through here.
    public mutating func push(_ bytes: UnsafeRawBufferPointer) -> [Item] {
        var out: [Item] = []
        guard let base = bytes.baseAddress else { return out }
        var off = 0
        let n = bytes.count
        while off < n {
            let hit = memchr(base + off, 0x0A, n - off)
            guard let hit else {
                let rest = n - off
                if discarding {
                    discarded += rest
                } else if pending.count + rest > maxLineBytes {
                    out.append(.oversized(pending.count + rest, head: head(base + off, rest)))
                    discarding = true
                    discarded = pending.count + rest
                    pending = []
                } else {
                    pending.append(contentsOf: UnsafeRawBufferPointer(start: base + off, count: rest))
                }
                return out
            }
            let nl = UnsafeRawPointer(hit) - base
            let part = UnsafeRawBufferPointer(start: base + off, count: nl - off)
            off = nl + 1
            if discarding {
                discarding = false
                discarded = 0
                continue
            }
            if pending.count + part.count > maxLineBytes {
                out.append(.oversized(pending.count + part.count, head: head(part.baseAddress ?? UnsafeRawPointer(base), part.count)))
                pending = []
                continue
            }
            var line = pending
            pending = []
            line.append(contentsOf: part)
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            if line.contains(where: { $0 != 0x20 && $0 != 0x09 }) { out.append(.line(line)) }
        }
        return out
    }

    /// The first `headBytes` of the line made of `pending` and then `count` bytes at `p`.
    private func head(_ p: UnsafeRawPointer, _ count: Int) -> [UInt8] {
        var h = Array(pending.prefix(Self.headBytes))
        let more = min(Self.headBytes - h.count, count)
        if more > 0 { h.append(contentsOf: UnsafeRawBufferPointer(start: p, count: more)) }
        return h
    }

    /// Bytes buffered for an incomplete line.
    public var bufferedBytes: Int { pending.count }
}
