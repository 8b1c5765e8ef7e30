/// Waiting requests, fair between clients: round-robin across clients,
/// first-in first-out within one. Pure; the daemon keeps the waiters.
public struct FairQueue<Ticket: Hashable & Sendable>: Sendable {
    private var queues: [Int64: [Ticket]] = [:]
    private var order: [Int64] = []          // clients in round-robin order
    private var nextIndex = 0
    private var clientOf: [Ticket: Int64] = [:]

    public init() {}

    public var count: Int { clientOf.count }
    public var isEmpty: Bool { clientOf.isEmpty }

    public mutating func enqueue(_ t: Ticket, client: Int64) {
        if queues[client] == nil { queues[client] = []; order.append(client) }
        queues[client]!.append(t)
        clientOf[t] = client
    }

    public mutating func remove(_ t: Ticket) {
        guard let c = clientOf.removeValue(forKey: t) else { return }
        queues[c]?.removeAll { $0 == t }
        if queues[c]?.isEmpty == true { drop(c) }
    }

    private mutating func drop(_ c: Int64) {
        queues[c] = nil
        if let i = order.firstIndex(of: c) {
            order.remove(at: i)
            if i < nextIndex { nextIndex -= 1 }
        }
    }

    /// The next ticket to serve among those `fits` accepts: clients take
    /// turns; within a client, the oldest ticket first.
    public mutating func next(where fits: (Ticket) -> Bool = { _ in true }) -> Ticket? {
        guard !order.isEmpty else { return nil }
        // nextIndex may equal order.count: a client that joins next is served next.
        for k in 0..<order.count {
            let i = (nextIndex + k) % order.count
            let c = order[i]
            guard let t = queues[c]?.first, fits(t) else { continue }
            queues[c]!.removeFirst()
            clientOf[t] = nil
            nextIndex = i + 1
            if queues[c]!.isEmpty { drop(c) }
            return t
        }
        return nil
    }

    /// 1-based place in the order tickets would be served if all fit.
    public func position(of t: Ticket) -> Int? {
        guard clientOf[t] != nil, !order.isEmpty else { return nil }
        var copy = self
        var n = 0
        while let x = copy.next() {
            n += 1
            if x == t { return n }
        }
        return nil
    }
}
