import Testing
@testable import SandpitOS

/// Rootless mode's parsing of the id files it trusts (the live mode runs in
/// clients/python/tests/test_rootless.py, as a user made for it).
@Suite struct RootlessTests {
    @Test func subordinateRangesAreFoundByNameOrByNumberFirstMatchWins() {
        let text = """
            alice:100000:65536
            # a comment line is not a range
            1001:200000:65536
            bob:300000:0
            bob:400000:1000
            alice:500000:65536

            """
        #expect(Rootless.subordinateRange(in: text, user: "alice", id: 1000).map { [$0.start, $0.count] } == [100000, 65536])
        #expect(Rootless.subordinateRange(in: text, user: "carol", id: 1001).map { [$0.start, $0.count] } == [200000, 65536])
        // An empty range is no range; the next line of the same user counts.
        #expect(Rootless.subordinateRange(in: text, user: "bob", id: 1002).map { [$0.start, $0.count] } == [400000, 1000])
        #expect(Rootless.subordinateRange(in: text, user: "dave", id: 1003) == nil)
        #expect(Rootless.subordinateRange(in: "alice:x:65536\nalice:1:\n", user: "alice", id: 1000) == nil)
    }

    @Test func idMapsParseAsTheKernelPrintsThem() {
        let m = Rootless.parseMap("         0       1001          1\n         1     100000      65536\n")
        #expect(m == [.init(inside: 0, outside: 1001, count: 1), .init(inside: 1, outside: 100000, count: 65536)])
        #expect(Rootless.parseMap("0 0 4294967295\n") == [.init(inside: 0, outside: 0, count: 4294967295)])
        #expect(Rootless.parseMap("garbage\n1 2\n") == [])
    }

    @Test func sandboxIDsAreTheIdsFromOneUpOfEitherMapShape() {
        // sandpit's own namespace: the user as 0, its subordinate range from 1.
        let own = "         0       1001          1\n         1     100000      65536\n"
        #expect(Rootless.idsFrom(uidMap: own, gidMap: own) == IDMapping(hostBase: 1, count: 65_536))
        // Inside a container's user namespace: one line maps root and the rest.
        let container = "0 100000 65536\n"
        #expect(Rootless.idsFrom(uidMap: container, gidMap: container) == IDMapping(hostBase: 1, count: 65_535))
        // Root alone, or too few ids for the sandbox user (uid 1000): no sandboxes.
        #expect(Rootless.idsFrom(uidMap: "0 1001 1\n", gidMap: "0 1001 1\n") == nil)
        #expect(Rootless.idsFrom(uidMap: "0 1001 1\n1 100000 500\n", gidMap: own) == nil)
    }

    @Test func asRootOnTheHostItIsNotRootless() {
        // These tests run as host root: the identity map.
        #expect(Rootless.active == false)
        #expect(Rootless.sandboxIDs == nil)
    }
}
