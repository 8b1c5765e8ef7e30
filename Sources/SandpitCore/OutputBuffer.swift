/// Retains an exec's output within a byte budget: the first half of the budget
/// is kept from the start (the head), the rest as a rolling tail. Chunks
/// dropped from the middle are counted, so `truncated` is exact.
public struct OutputBuffer: Sendable {
    public let budget: Int
    public private(set) var head: [OutputChunk] = []
    public private(set) var tail: [OutputChunk] = []
    public private(set) var headBytes = 0
    public private(set) var tailBytes = 0
    public private(set) var droppedBytes: Int64 = 0
    public private(set) var nextSeq = 0
    public private(set) var stdoutBytes: Int64 = 0
    public private(set) var stderrBytes: Int64 = 0

    public init(budget: Int) { self.budget = max(budget, 2) }

    public var truncated: Bool { droppedBytes > 0 }

    /// Appends bytes as the next chunk(s) and returns them. Chunks larger than
    /// what the head has left are split so the head fills exactly.
    @discardableResult
    public mutating func append(_ stream: OutputStream, _ bytes: [UInt8]) -> [OutputChunk] {
        switch stream {
        case .stdout, .pty: stdoutBytes += Int64(bytes.count)
        case .stderr: stderrBytes += Int64(bytes.count)
        case .stdin: break
        }
        var out: [OutputChunk] = []
        var rest = bytes[...]
        let headBudget = budget / 2
        if headBytes < headBudget {
            let take = min(headBudget - headBytes, rest.count)
            let c = OutputChunk(seq: nextSeq, stream: stream, bytes: Array(rest.prefix(take)))
            nextSeq += 1
            head.append(c)
            headBytes += take
            out.append(c)
            rest = rest.dropFirst(take)
        }
        if !rest.isEmpty {
            let c = OutputChunk(seq: nextSeq, stream: stream, bytes: Array(rest))
            nextSeq += 1
            tail.append(c)
            tailBytes += c.bytes.count
            out.append(c)
            let tailBudget = budget - headBudget
            while tailBytes > tailBudget, !tail.isEmpty {
                let over = tailBytes - tailBudget
                if tail[0].bytes.count <= over {
                    tailBytes -= tail[0].bytes.count
                    droppedBytes += Int64(tail[0].bytes.count)
                    tail.removeFirst()
                } else {
                    tail[0].bytes.removeFirst(over)
                    tailBytes -= over
                    droppedBytes += Int64(over)
                }
            }
        }
        return out
    }

    /// Forgets chunks up to `seq` that a reader has consumed (for a helper
    /// process whose output is read as it comes and never replayed).
    public mutating func discard(through seq: Int) {
        while let c = head.first, c.seq <= seq { headBytes -= c.bytes.count; head.removeFirst() }
        while let c = tail.first, c.seq <= seq { tailBytes -= c.bytes.count; tail.removeFirst() }
    }

    /// Retained chunks with seq >= since, in order.
    public func chunks(since: Int) -> [OutputChunk] {
        (head + tail).filter { $0.seq >= since }
    }
}
