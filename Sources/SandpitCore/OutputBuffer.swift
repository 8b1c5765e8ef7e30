/// Retains an exec's output within a byte budget: the first half of the budget
/// is kept from the start (the head), the rest as a rolling tail. Chunks
/// dropped from the middle are counted, so `truncated` is exact.
///
/// Every byte has an offset: its position in all the output the exec wrote.
/// The buffer decides what is retained; where retained bytes live is its
/// owner's choice (`ExecSession`): all in memory, or, once `spill()` is
/// called, in a log file at those offsets with only the newest
/// `memoryBytes` also kept in memory. `chunks(since:read:)` then reads the
/// rest back through the owner, and `takeDropped()` names the ranges the
/// file no longer needs.
public struct OutputBuffer: Sendable {
    struct Entry: Sendable {
        var seq: Int
        var stream: OutputStream
        var offset: Int64
        var length: Int
        var bytes: [UInt8]?     // nil: only in the owner's log
    }

    public let budget: Int
    /// Bytes kept in memory once spilled (the newest).
    public let memoryBytes: Int
    private var head: [Entry] = []
    private var tail: [Entry] = []
    public private(set) var headBytes = 0
    public private(set) var tailBytes = 0
    public private(set) var droppedBytes: Int64 = 0
    public private(set) var nextSeq = 0
    public private(set) var stdoutBytes: Int64 = 0
    public private(set) var stderrBytes: Int64 = 0
    /// Whether retained bytes are in the owner's log (so may leave memory).
    public private(set) var spilled = false
    /// Retained bytes also held in memory.
    public private(set) var inMemoryBytes = 0
    /// Offsets of the dropped range not yet given to the owner: [start, end).
    private var droppedRange: (start: Int64, end: Int64)?
    private var written: Int64 = 0

    public init(budget: Int, memoryBytes: Int = .max) {
        self.budget = max(budget, 2)
        self.memoryBytes = max(memoryBytes, 0)
    }

    public var truncated: Bool { droppedBytes > 0 }
    /// Bytes retained (in memory or in the log).
    public var retainedBytes: Int { headBytes + tailBytes }

    /// Appends bytes as the next chunk(s) and returns them, each with its
    /// offset. Chunks larger than what the head has left are split so the
    /// head fills exactly.
    @discardableResult
    public mutating func append(_ stream: OutputStream, _ bytes: [UInt8]) -> [(chunk: OutputChunk, offset: Int64)] {
        switch stream {
        case .stdout, .pty: stdoutBytes += Int64(bytes.count)
        case .stderr: stderrBytes += Int64(bytes.count)
        case .stdin: break
        }
        var out: [(chunk: OutputChunk, offset: Int64)] = []
        var rest = bytes[...]
        let headBudget = budget / 2
        func add(_ part: ArraySlice<UInt8>, toHead: Bool) {
            let e = Entry(seq: nextSeq, stream: stream, offset: written, length: part.count, bytes: Array(part))
            nextSeq += 1
            written += Int64(part.count)
            inMemoryBytes += part.count
            if toHead { head.append(e); headBytes += part.count } else { tail.append(e); tailBytes += part.count }
            out.append((OutputChunk(seq: e.seq, stream: stream, bytes: e.bytes!), e.offset))
        }
        if headBytes < headBudget {
            let take = min(headBudget - headBytes, rest.count)
            add(rest.prefix(take), toHead: true)
            rest = rest.dropFirst(take)
        }
        if !rest.isEmpty {
            add(rest, toHead: false)
            let tailBudget = budget - headBudget
            while tailBytes > tailBudget, !tail.isEmpty {
                let over = tailBytes - tailBudget
                let cut = min(over, tail[0].length)
                drop(tail[0].offset, cut)
                if tail[0].bytes != nil { inMemoryBytes -= cut }
                tailBytes -= cut
                if cut == tail[0].length {
                    tail.removeFirst()
                } else {
                    tail[0].offset += Int64(cut)
                    tail[0].length -= cut
                    tail[0].bytes?.removeFirst(cut)
                }
            }
        }
        if spilled { evict() }
        return out
    }

    private mutating func drop(_ offset: Int64, _ length: Int) {
        droppedBytes += Int64(length)
        // Drops come off the tail's front, so each begins where the last ended.
        let end = offset + Int64(length)
        droppedRange = droppedRange.map { (min($0.start, offset), max($0.end, end)) } ?? (offset, end)
    }

    /// Retained bytes are in the owner's log from now on: all but the newest
    /// `memoryBytes` leave memory.
    public mutating func spill() {
        spilled = true
        evict()
    }

    /// Once spilled, nothing stays in memory (a finished exec, read rarely).
    public mutating func leaveMemory() {
        if spilled { evict(keeping: 0) }
    }

    private mutating func evict(keeping limit: Int? = nil) {
        let keep = limit ?? memoryBytes
        guard inMemoryBytes > keep else { return }
        func clear(_ list: inout [Entry]) {
            for i in list.indices where inMemoryBytes > keep {
                guard let b = list[i].bytes else { continue }
                inMemoryBytes -= b.count
                list[i].bytes = nil
            }
        }
        clear(&head)
        clear(&tail)
    }

    /// The dropped range (offsets) the log no longer needs, once it is at
    /// least `minBytes` long; nil otherwise.
    public mutating func takeDropped(minBytes: Int64 = 0) -> (offset: Int64, length: Int64)? {
        guard let r = droppedRange, r.end - r.start >= max(minBytes, 1) else { return nil }
        droppedRange = nil
        return (r.start, r.end - r.start)
    }

    /// Retained chunks (offset, bytes) still in memory: what a spill writes.
    public var chunksInMemory: [(offset: Int64, bytes: [UInt8])] {
        (head + tail).compactMap { e in e.bytes.map { (e.offset, $0) } }
    }

    /// Forgets chunks up to `seq` that a reader has consumed (for a helper
    /// process whose output is read as it comes and never replayed).
    public mutating func discard(through seq: Int) {
        while let c = head.first, c.seq <= seq { headBytes -= c.length; inMemoryBytes -= c.bytes?.count ?? 0; head.removeFirst() }
        while let c = tail.first, c.seq <= seq { tailBytes -= c.length; inMemoryBytes -= c.bytes?.count ?? 0; tail.removeFirst() }
    }

    /// Retained chunks with seq >= since, in order; bytes no longer in memory
    /// come from `read(offset, length)` (a chunk it cannot read is left out).
    public func chunks(since: Int, read: (Int64, Int) -> [UInt8]? = { _, _ in nil }) -> [OutputChunk] {
        var out: [OutputChunk] = []
        for list in [head, tail] {
            for e in list where e.seq >= since {
                if let b = e.bytes ?? read(e.offset, e.length) { out.append(OutputChunk(seq: e.seq, stream: e.stream, bytes: b)) }
            }
        }
        return out
    }
}
