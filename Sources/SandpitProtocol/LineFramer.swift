/// Splits a byte stream into `\n`-terminated lines of at most `maxLineBytes`.
/// A longer line is reported once as `.oversized` and its remainder is skipped
/// up to the next newline, so one bad request never desynchronises the stream.
public struct LineFramer: Sendable {
    public enum Item: Sendable, Equatable {
        case line([UInt8])
        case oversized(Int)   // bytes seen before giving up on the line
    }

    public let maxLineBytes: Int
    private var pending: [UInt8] = []
    private var discarding = false
    private var discarded = 0

    public init(maxLineBytes: Int) { self.maxLineBytes = maxLineBytes }

    public mutating func push<C: Collection<UInt8>>(_ bytes: C) -> [Item] {
        var out: [Item] = []
        var rest = bytes[...]
        while !rest.isEmpty {
            if let nl = rest.firstIndex(of: UInt8(ascii: "\n")) {
                let part = rest[..<nl]
                rest = rest[rest.index(after: nl)...]
                if discarding {
                    discarding = false
                    discarded = 0
                    continue
                }
                if pending.count + part.count > maxLineBytes {
                    out.append(.oversized(pending.count + part.count))
                    pending = []
                    continue
                }
                pending.append(contentsOf: part)
                if pending.last == UInt8(ascii: "\r") { pending.removeLast() }
                if !pending.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { out.append(.line(pending)) }
                pending = []
            } else {
                if discarding {
                    discarded += rest.count
                } else if pending.count + rest.count > maxLineBytes {
                    out.append(.oversized(pending.count + rest.count))
                    discarding = true
                    discarded = pending.count + rest.count
                    pending = []
                } else {
                    pending.append(contentsOf: rest)
                }
                rest = rest[rest.endIndex...]
            }
        }
        return out
    }

    /// Bytes buffered for an incomplete line.
    public var bufferedBytes: Int { pending.count }
}
