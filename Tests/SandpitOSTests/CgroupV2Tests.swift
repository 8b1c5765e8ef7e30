import Foundation
import Testing
@testable import SandpitOS

/// The v2 driver against a fake cgroupfs tree (these hosts run v1, so v2 is
/// exercised here; v1 is exercised live by the integration suites).
@Suite struct CgroupV2Tests {
    func fakeTree() throws -> String {
        let root = NSTemporaryDirectory() + "cgv2-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root + "/system.slice/sandpitd.service", withIntermediateDirectories: true)
        try "cpuset cpu io memory hugetlb pids rdma misc\n".write(toFile: root + "/cgroup.controllers", atomically: true, encoding: .utf8)
        return root
    }

    @Test func detectsV2AndNestsBesideTheDaemon() throws {
        let root = try fakeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let driver = Cgroups.detect(root: root, prefix: "sandpit-x")
        #expect(driver.version == .v2)
        let v2 = CgroupV2Driver(root: root, prefix: "sandpit-x", selfCgroup: "0::/system.slice/sandpitd.service\n")
        let h = try v2.create("sb_test", limits: CgroupLimits(memoryBytes: 256 << 20, pids: 64, cpuMillicores: 500))
        let dir = root + "/system.slice/sandpit-x/sb_test"
        #expect(h.dirs == [dir] && h.trackingDir == dir && h.memoryDir == dir)
        func read(_ f: String) -> String? { try? String(contentsOfFile: f, encoding: .utf8) }
        #expect(read(dir + "/memory.max") == String(256 << 20))
        #expect(read(dir + "/memory.swap.max") == "0")
        #expect(read(dir + "/pids.max") == "64")
        #expect(read(dir + "/cpu.max") == "50000 100000")
        #expect(read(root + "/system.slice/sandpit-x/cgroup.subtree_control") == "+memory +pids +cpu")
        #expect(v2.existing() == ["sb_test"])
    }

    @Test func reportsOOMKillsFromMemoryEvents() throws {
        let root = try fakeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let v2 = CgroupV2Driver(root: root, prefix: "p", selfCgroup: "0::/\n")
        let h = try v2.create("sb_oom", limits: CgroupLimits(memoryBytes: nil, pids: nil, cpuMillicores: nil))
        #expect(h.oomKills() == 0)
        try "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n".write(toFile: root + "/p/sb_oom/memory.events", atomically: true, encoding: .utf8)
        #expect(h.oomKills() == 2)
        #expect(!FileManager.default.fileExists(atPath: root + "/p/sb_oom/memory.max"), "no limit, no file written")
    }

    @Test func fallsBackToNoneWithoutControllers() throws {
        let root = NSTemporaryDirectory() + "cgnone-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try "\n".write(toFile: root + "/cgroup.controllers", atomically: true, encoding: .utf8)
        #expect(Cgroups.detect(root: root, prefix: "x").version == .none)
    }
}
