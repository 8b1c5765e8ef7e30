#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SandpitCore
import SandpitTestSupport

/// Idle pause → hibernate → delete, wake on demand, revival after a daemon
/// kill. Short idle timeouts; waits are `eventually`, never timed assertions.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct LifecycleTests {
    func state(_ a: Arena, _ sb: String) -> String? {
        (try? a.client.result("sandbox.get", ["sandboxId": .string(sb)]))?["state"]?.stringValue
    }

    func create(_ a: Arena, idle: JSONObject) throws -> String {
        try a.client.result("sandbox.create", ["idle": .object(idle)])["sandboxId"]!.stringValue!
    }

    @Test func idleSandboxPausesAndWakesOnTheNextRequest() throws {
        try Arena.with { a in
            let sb = try create(a, idle: ["pauseAfterMs": 300])
            _ = try a.sh(sb, "echo before > /home/user/f")
            #expect(eventually { state(a, sb) == "paused" })
            // Frozen: its processes use no CPU and cannot run.
            let freezer = Host.cgroups(matching: sb).first { FileManager.default.fileExists(atPath: $0 + "/freezer.state") }
            #expect(freezer.flatMap { try? String(contentsOfFile: $0 + "/freezer.state", encoding: .utf8) }?.hasPrefix("FROZEN") == true)
            let r = try a.sh(sb, "cat /home/user/f")
            #expect(r.stdout == "before\n")
            #expect(r.result["wake"]?["from"] == "paused" && r.result["wake"]?["lost"] == [])
            #expect(state(a, sb) == "running")
        }
    }

    @Test func idleSandboxHibernatesReleasesEverythingAndWakesWithItsFiles() throws {
        try Arena.with { a in
            let sb = try create(a, idle: ["pauseAfterMs": 200, "hibernateAfterMs": 700])
            _ = try a.sh(sb, "head -c 5000000 /dev/urandom > /home/user/blob; sha256sum /home/user/blob > /home/user/sum")
            #expect(eventually { state(a, sb) == "hibernated" })
            #expect(Host.cgroups(matching: sb).isEmpty, "hibernation frees the cgroup")
            #expect(Host.agents().count == 1, "only the bystander's agent is left")
            let r = try a.sh(sb, "sha256sum -c --quiet /home/user/sum && echo intact")
            #expect(r.stdout == "intact\n")
            #expect(r.result["wake"]?["from"] == "hibernated")
            #expect(r.result["wake"]?["restored"] == ["filesystem"] && r.result["wake"]?["lost"] == ["processes", "memory"])
            // Hibernation took a checkpoint named for it.
            let cks = try a.client.result("checkpoint.list", ["sandboxId": .string(sb)])["checkpoints"]!.arrayValue!
            #expect(cks.contains { $0["name"] == "hibernate" })
        }
    }

    @Test func idleDeletionRemovesTheSandbox() throws {
        try Arena.with { a in
            let sb = try create(a, idle: ["deleteAfterMs": 400])
            #expect(eventually { (try? a.client.call("sandbox.get", ["sandboxId": .string(sb)]))?["error"]?["data"]?["code"] == "not_found" })
            #expect(Host.cgroups(matching: sb).isEmpty)
        }
    }

    /// A fork may be given shorter idle rules and more metadata than its
    /// source (a snapshot kept as a hibernated fork for a while, tagged).
    @Test func aForkTakesItsOwnIdleRulesAndMetadata() throws {
        try Arena.with { a in
            let sb = try a.client.result("sandbox.create", ["metadata": ["owner": "a", "k": "src"]])["sandboxId"]!.stringValue!
            _ = try a.sh(sb, "echo kept > /home/user/f")
            let fork = try a.client.result("sandbox.fork", ["sandboxId": .string(sb), "idle": ["deleteAfterMs": 600],
                                                            "metadata": ["k": "fork", "snapshot": "1"]])["sandboxes"]!.arrayValue![0]
            let id = fork["sandboxId"]!.stringValue!
            #expect(fork["metadata"] == ["owner": "a", "k": "fork", "snapshot": "1", "forkedFrom": .string(sb)])
            #expect(try a.sh(id, "cat /home/user/f").stdout == "kept\n")
            #expect(eventually { (try? a.client.call("sandbox.get", ["sandboxId": .string(id)]))?["error"]?["data"]?["code"] == "not_found" })
            #expect(state(a, sb) != nil, "the source keeps its own rules")
            let bad = try a.client.call("sandbox.fork", ["sandboxId": .string(sb), "policy": "strict"])
            #expect(bad["error"]?["data"]?["code"] == "invalid_params")
            let long = try a.client.call("sandbox.fork", ["sandboxId": .string(sb), "idle": ["deleteAfterMs": .null]])
            #expect(long["error"]?["data"]?["code"] == "permission_denied" && long["error"]?["data"]?["field"] == "idle.deleteAfterMs",
                    "longer than the policy allows, as at create")
        }
    }

    @Test func sandboxesMarkedKeepAreNeverDeletedForIdleness() throws {
        try Arena.with { a in
            let sb = try a.client.result("sandbox.create", ["idle": ["deleteAfterMs": 300], "metadata": ["sandpit.keep": "true"]])["sandboxId"]!.stringValue!
            _ = try a.sh(sb, "echo precious > /home/user/p")
            #expect(eventually { state(a, sb) == "hibernated" })
            usleep(800_000)
            #expect(state(a, sb) == "hibernated", "kept, not deleted")
            #expect(try a.sh(sb, "cat /home/user/p").stdout == "precious\n")
        }
    }

    @Test func explicitPauseResumeHibernate() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            _ = try a.sh(sb, "echo x > /home/user/x")
            #expect(try a.client.result("sandbox.pause", ["sandboxId": .string(sb)])["state"] == "paused")
            let resumed = try a.client.result("sandbox.resume", ["sandboxId": .string(sb)])
            #expect(resumed["state"] == "running" && resumed["wake"]?["from"] == "paused")
            #expect(try a.client.result("sandbox.hibernate", ["sandboxId": .string(sb)])["state"] == "hibernated")
            let back = try a.client.result("sandbox.resume", ["sandboxId": .string(sb)])
            #expect(back["state"] == "running" && back["wake"]?["from"] == "hibernated")
            #expect(try a.sh(sb, "cat /home/user/x").stdout == "x\n")
            // Resuming a running sandbox is a no-op without `wake`.
            #expect(try a.client.result("sandbox.resume", ["sandboxId": .string(sb)])["wake"] == nil)
            // Pausing from paused, hibernating from paused.
            _ = try a.client.result("sandbox.pause", ["sandboxId": .string(sb)])
            #expect(try a.client.result("sandbox.hibernate", ["sandboxId": .string(sb)])["state"] == "hibernated")
            #expect(try a.sh(sb, "cat /home/user/x").stdout == "x\n")
        }
    }

    @Test func watchersHearStateChangesWithWakeDetails() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            let watcher = try a.daemon.connect()
            #expect(try watcher.result("sandbox.watch", ["sandboxId": .string(sb)])["watching"] == .string(sb))
            _ = try a.client.result("sandbox.pause", ["sandboxId": .string(sb)])
            _ = try a.sh(sb, "true")
            _ = try a.client.result("sandbox.hibernate", ["sandboxId": .string(sb)])
            _ = try a.sh(sb, "true")
            var seen: [JSONValue] = []
            while seen.count < 4, let m = watcher.readMessage(timeout: 10) { if m["method"] == "sandbox.state" { seen.append(m["params"]!) } }
            #expect(seen.map { $0["state"] } == ["paused", "running", "hibernated", "running"])
            #expect(seen[1]["wake"]?["from"] == "paused" && seen[3]["wake"]?["from"] == "hibernated")
            #expect(seen.allSatisfy { $0["sandboxId"] == .string(sb) })
        }
    }

    @Test func keepaliveLeasesAndConnectedClientsHoldItAwake() throws {
        try Arena.with { a in
            let sb = try create(a, idle: ["pauseAfterMs": 300])
            let k = try a.client.result("sandbox.keepalive", ["sandboxId": .string(sb), "forMs": 1500])
            #expect(k["keepaliveUntil"] != nil)
            usleep(900_000)
            #expect(state(a, sb) == "running", "the lease holds it awake")
            #expect(eventually { state(a, sb) == "paused" }, "and it pauses after the lease")
            // A connection that asks holds it while connected.
            let holder = try a.daemon.connect()
            let held = try holder.result("sandbox.keepalive", ["sandboxId": .string(sb), "forMs": 0, "whileConnected": true])
            #expect(held["wake"]?["from"] == "paused")
            usleep(900_000)
            #expect(state(a, sb) == "running")
            holder.close()
            #expect(eventually { state(a, sb) == "paused" })
        }
    }

    /// At once, and after a pause (the command then comes from the agent's
    /// spare process, whose own waiting does not count).
    @Test(arguments: [0, 100_000]) func backgroundProcessesKeepItAwakeByDefault(pauseUs: Int) throws {
        try Arena.with { a in
            let sb = try create(a, idle: ["pauseAfterMs": 200])
            usleep(useconds_t(pauseUs))
            _ = try a.client.result("exec.run", ["sandboxId": .string(sb), "background": true, "shell": "sleep 3"])
            usleep(1_000_000)
            #expect(state(a, sb) == "running", "a process it left running keeps it awake")
            #expect(eventually { state(a, sb) == "paused" }, "and it pauses once that process ends")
        }
    }

    /// An interpreter context and its frozen copies wait for cells: they are
    /// not background work. A server started from a cell is, until it ends.
    @Test func anIdleInterpreterContextDoesNotKeepItAwake() throws {
        try Arena.with { a in
            let sb = try create(a, idle: ["pauseAfterMs": 200])
            for code in ["x = 1", "x += 1", "import subprocess; p = subprocess.Popen(['sleep', '2'])"] {
                _ = try a.client.result("code.run", ["sandboxId": .string(sb), "code": .string(code)])
            }
            usleep(1_000_000)
            #expect(state(a, sb) == "running", "the process the cell started keeps it awake")
            #expect(eventually { state(a, sb) == "paused" }, "the interpreter and its three frozen copies do not")
            let r = try a.client.result("code.run", ["sandboxId": .string(sb), "code": "x"])
            #expect(r["results"] == [["text/plain": "2"]] && r["restarted"] == false)
        }
    }

    @Test func longerIdleThanThePolicyAllowsIsRefused() throws {
        try Arena.with { a in
            let r = try a.client.call("sandbox.create", ["policy": "strict", "idle": ["deleteAfterMs": .null]])
            #expect(r["error"]?["data"]?["code"] == "permission_denied")
            #expect(r["error"]?["data"]?["field"] == "idle.deleteAfterMs")
        }
    }

    /// SIGKILL the daemon with 20 live sandboxes; after restart all are
    /// listed as hibernated, nothing from before is left, and each wakes with
    /// its files.
    @Test func twentySandboxesSurviveADaemonKill() throws {
        let scratch = try TestEnv.scratch("revive")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let data = scratch + "/data"
        let first = try DaemonProcess(socket: true, name: "revive1", dataDir: data)
        defer { first.cleanup() }
        let c = try first.connect()
        var ids: [String] = []
        for i in 0..<20 {
            let sb = try c.result("sandbox.create", ["metadata": ["n": .string("\(i)")]])["sandboxId"]!.stringValue!
            _ = try c.result("exec.run", ["sandboxId": .string(sb), "shell": .string("echo \(i) > /home/user/n; sleep 1000 >/dev/null 2>&1 &")])
            ids.append(sb)
        }
        _ = try c.result("sandbox.pause", ["sandboxId": .string(ids[0])])
        first.stop(signal: SIGKILL)
        // Running sandboxes see their daemon gone and end; the paused one is
        // frozen and cannot, until the next daemon start thaws and kills it.
        #expect(eventually { Host.pids(matching: "sleep 1000").count == 1 && Host.agents().count == 1 })
        let second = try DaemonProcess(socket: true, name: "revive2", dataDir: data)
        defer { second.cleanup() }
        let c2 = try second.connect()
        #expect(eventually { Host.pids(matching: "sleep 1000").isEmpty && Host.agents().isEmpty })
        let listed = try c2.result("sandbox.list")["sandboxes"]!.arrayValue!
        #expect(listed.count == 20 && listed.allSatisfy { $0["state"] == "hibernated" })
        for id in ids { #expect(Host.cgroups(matching: id).isEmpty && !Host.mountinfo().contains(id)) }
        for (i, id) in ids.enumerated() {
            c2.notifications = []
            let r = try c2.result("exec.run", ["sandboxId": .string(id), "shell": "cat /home/user/n"])
            #expect(r["wake"]?["from"] == "hibernated")
            #expect(c2.notifications.first?["params"]?["data"] == .string("\(i)\n"))
        }
        #expect(second.stop() == 0)
    }
}
