import Testing
@testable import SandpitCore

@Suite struct FairQueueTests {
    @Test func clientsTakeTurnsAndEachIsFIFO() {
        var q = FairQueue<String>()
        for t in ["a1", "a2", "a3", "a4"] { q.enqueue(t, client: 1) }
        for t in ["b1", "b2"] { q.enqueue(t, client: 2) }
        #expect(q.position(of: "b2") == 4)
        var served: [String] = []
        while let t = q.next() { served.append(t) }
        #expect(served == ["a1", "b1", "a2", "b2", "a3", "a4"])
        #expect(q.isEmpty)
    }

    @Test func aLateClientIsNotStarved() {
        var q = FairQueue<Int>()
        for t in 0..<10 { q.enqueue(t, client: 1) }
        #expect(q.next() == 0)
        q.enqueue(100, client: 2)
        #expect(q.next() == 100, "the newcomer goes next, not after nine more of client 1")
        #expect(q.next() == 1)
    }

    @Test func removalAndFitness() {
        var q = FairQueue<Int>()
        q.enqueue(1, client: 1)
        q.enqueue(2, client: 2)
        q.enqueue(3, client: 2)
        q.remove(2)
        #expect(q.position(of: 3) == 2)
        #expect(q.next(where: { $0 != 1 }) == 3, "a ticket that does not fit does not block other clients")
        #expect(q.next() == 1)
        #expect(q.next() == nil)
    }
}
