#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SandpitCore
import SandpitTestSupport

/// Checks, from inside a sandbox, that it sees only itself; and from the host,
/// that teardown leaves no process, mount or cgroup.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct IsolationTests {
    func sh(_ c: LineConnection, _ sb: String, _ script: String) throws -> (code: Int64, out: String) {
        c.notifications = []
        let r = try c.result("exec.run", ["sandboxId": .string(sb), "shell": .string(script)])
        let out = c.notifications.compactMap { n -> String? in
            guard n["params"]?["stream"] == "stdout", let d = n["params"]?["data"]?.stringValue else { return nil }
            return n["params"]?["encoding"] == "base64" ? String(decoding: Base64.decode(d) ?? [], as: UTF8.self) : d
        }.joined()
        return (r["exitCode"]!.intValue!, out)
    }

    @Test func sandboxSeesOnlyItself() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let a = try c.result("sandbox.create")["sandboxId"]!.stringValue!
            let b = try c.result("sandbox.create")["sandboxId"]!.stringValue!
            // Processes: only the agent (and its spare: the next command's process, made ahead) and this command's own.
            let ps = try sh(c, a, "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(cat $p/comm 2>/dev/null)\"; done | sort -n")
            let procs = ps.out.split(separator: "\n").map { $0.split(separator: " ") }
            #expect(procs.first?.first == "1" && procs.first?.last == "sandpit-agent", "ps: \(ps.out)")
            #expect(Set(procs.compactMap { $0.last.map(String.init) }).isSubset(of: ["sandpit-agent", "sandpit-spare", "bash", "cat", "sort"]), "ps: \(ps.out)")
            // Users: not root, and sandbox root is not host root.
            #expect(try sh(c, a, "id -u").out == "1000\n")
            let map = try sh(c, a, "cat /proc/self/uid_map").out.split(whereSeparator: { $0 == " " || $0 == "\n" })
            #expect(map.count == 3 && map[1] != "0", "uid_map: \(map)")
            // Capabilities and privileges.
            let status = try sh(c, a, "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status").out
            #expect(status.contains("CapEff:\t0000000000000000"))
            #expect(status.contains("CapPrm:\t0000000000000000"))
            // Only a container root's set is left to bound anything (`user: "root"` gets it; this process has none).
            #expect(status.contains("CapBnd:\t00000000000004fb"))
            #expect(status.contains("NoNewPrivs:\t1"))
            // Network: loopback only.
            let ifaces = try sh(c, a, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").out
            #expect(ifaces == "lo\n")
            // Host files: the scratch dir, the data dir and /root are invisible.
            let marker = d.scratch + "/host-secret"
            #expect(FileManager.default.createFile(atPath: marker, contents: Data("TOP-SECRET-CONTENT".utf8)), "the host marker must exist for the probe to mean anything")
            let probe = try sh(c, a, "cat '\(marker)' 2>&1; ls '\(d.dataDir)' 2>&1; ls -a /root 2>&1")
            #expect(!probe.out.contains("TOP-SECRET-CONTENT") && !probe.out.contains("catalog.sqlite"), "\(probe.out)")
            // Other sandboxes' files are invisible.
            _ = try sh(c, a, "echo private > /home/user/only-a")
            #expect(try sh(c, b, "cat /home/user/only-a").code != 0)
            // Read-only places stay read-only; the home dir and /tmp are writable.
            #expect(try sh(c, a, "touch /usr/bin/x").code != 0)
            #expect(try sh(c, a, "echo x > /proc/sys/kernel/hostname").code != 0)
            #expect(try sh(c, a, "touch /etc/passwd").code != 0)
            #expect(try sh(c, a, "touch /home/user/ok /tmp/ok && echo yes").out == "yes\n")
            // Clean environment: nothing from the daemon leaks in.
            let env = try sh(c, a, "env | cut -d= -f1 | sort | tr '\\n' ' '").out
            #expect(env == "HOME LANG LOGNAME PATH PWD PYTHONUNBUFFERED SHELL SHLVL USER _ ", "env: \(env)")
            // Only stdio is open in a command.
            #expect(try sh(c, a, "ls /proc/self/fd | sort -n | tr '\\n' ' '").out == "0 1 2 3 ")
            // The host's default python runs.
            #expect(try sh(c, a, "python3 -c 'print(6*7)'").out == "42\n")
        }
    }

    /// After a pause (an agent thinking) the next command's process is already
    /// in its cgroup, made ahead of time: it must be like a command spawned at
    /// once in everything a command can see or be done to.
    @Test func commandsStartedAfterAPauseComeFromTheSpareAndAreLikeAnyOther() throws {
        guard Host.sh("stat -fc %T /sys/fs/cgroup/pids 2>/dev/null").output.hasPrefix("cgroupfs") else { return }   // v1 here; the VM lane checks v2
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try c.result("sandbox.create", ["limits": ["pids": 128]])["sandboxId"]!.stringValue!
            // (name, comm) of each process in the sandbox's per-command groups.
            func spares() -> [(String, String)] {
                Host.cgroups(matching: sb).filter { $0.contains("/memory/") }.flatMap { dir in
                    FileManager.default.subpaths(atPath: dir)?.filter { $0.hasPrefix("ex_") && !$0.contains("/") }.flatMap { g in
                        ((try? String(contentsOfFile: dir + "/" + g + "/cgroup.procs", encoding: .utf8)) ?? "").split(separator: "\n").map {
                            (g, ((try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines))
                        }
                    } ?? []
                }
            }
            func spare() -> [String] { spares().map(\.1) }
            var spareGroup = ""
            func afterAPause() {
                #expect(eventually { spare() == ["sandpit-spare"] }, "a spare waits in a group of its own: \(spares())")
                spareGroup = spares().first?.0 ?? "?"
            }
            afterAPause()
            // What the command sees: its credentials, cwd, env, argv, stdin, only stdio open, its own exec group.
            c.notifications = []
            let r = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["python3", "-c", """
                import os, sys; print(os.getuid(), os.getcwd(), os.environ['GREETING'], sys.stdin.read().upper(), sys.argv[1:], sorted(os.listdir('/proc/self/fd')), os.getsid(0) == os.getpid(), [l for l in open('/proc/self/cgroup') if ':memory:' in l][0].strip())
                """, "a b"], "env": ["GREETING": "hej"], "cwd": "/tmp", "stdin": "piped"])
            let out = c.notifications.compactMap { $0["params"]?["data"]?.stringValue }.joined()
            #expect(r["exitCode"] == 0 && out.hasPrefix("1000 /tmp hej PIPED ['a b'] ['0', '1', '2', '3'] True "), "\(out)")
            #expect(out.hasSuffix(":memory:/\(spareGroup)\n"), "in the spare's group (\(spareGroup)), its own: \(out)")
            // A terminal.
            afterAPause()
            c.notifications = []
            _ = try c.result("exec.run", ["sandboxId": .string(sb), "shell": "tty; stty size", "pty": ["rows": 30, "cols": 100]])
            let tty = c.notifications.compactMap { $0["params"]?["data"]?.stringValue }.joined()
            #expect(tty.hasPrefix("/dev/pts/") && tty.contains("30 100"), "\(tty)")
            // A bad working directory is reported as before.
            afterAPause()
            let cwd = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["true"], "cwd": "/nope"])
            #expect(cwd["spawnError"]?.stringValue?.contains("/nope") == true, "\(cwd)")
            // exec.kill reaches the whole tree, also what left the session.
            afterAPause()
            let bg = try c.result("exec.run", ["sandboxId": .string(sb), "shell": "setsid sleep 300 & sleep 300", "background": true])
            usleep(200_000)
            _ = try c.result("exec.kill", ["sandboxId": .string(sb), "execId": bg["execId"]!])
            #expect(eventually { (try? self.sh(c, sb, "ls /proc/*/comm | xargs cat 2>/dev/null | grep -c '^sleep$'").out) == "0\n" })
            // A restore kills every process but the agent, the spare too; a new one follows.
            let step = try c.result("exec.run", ["sandboxId": .string(sb), "shell": "echo one > /home/user/f"])["checkpoint"]?["step"]
            _ = try c.result("sandbox.restore", ["sandboxId": .string(sb), "step": step ?? 0])
            afterAPause()
            #expect(try sh(c, sb, "cat /home/user/f").out == "one\n")
            // The spare is no work of the sandbox's: it does not keep an idle sandbox awake.
            let idle = try c.result("sandbox.create", ["idle": ["pauseAfterMs": 300]])["sandboxId"]!
            _ = try c.result("exec.run", ["sandboxId": idle, "cmd": ["true"]])
            #expect(eventually { (try? c.result("sandbox.get", ["sandboxId": idle])["state"]) == "paused" })
        }
    }

    @Test func deleteKillsEverythingAndLeavesNothing() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try c.result("sandbox.create")["sandboxId"]!.stringValue!
            // Processes that try to survive: a new session ignoring TERM, a stopped one, a double fork.
            let bg = try c.result("exec.run", ["sandboxId": .string(sb), "shell": """
                setsid sh -c 'trap "" TERM HUP; exec sleep 1000' </dev/null >/dev/null 2>&1 &
                sleep 1000 </dev/null >/dev/null 2>&1 & kill -STOP $!
                (sh -c 'sleep 1000 &' &) </dev/null >/dev/null 2>&1
                echo spawned
                """])
            #expect(bg["exitCode"] == 0)
            let hostSleepers = Host.pids(matching: "sleep 1000")
            #expect(hostSleepers.count >= 3)
            #expect(!Host.cgroups(matching: sb).isEmpty)
            _ = try c.result("sandbox.delete", ["sandboxId": .string(sb)])
            #expect(Host.pids(matching: "sleep 1000").isEmpty)
            #expect(Host.agents().isEmpty)
            #expect(Host.cgroups(matching: sb).isEmpty)
            #expect(!Host.mountinfo().contains(sb))
            #expect(!FileManager.default.fileExists(atPath: d.dataDir + "/store/sandboxes/" + sb))
        }
    }

    @Test func restartAfterKillReconcilesAndCleansUp() throws {
        let scratch = try TestEnv.scratch("restart")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let data = scratch + "/data"
        let first = try DaemonProcess(socket: true, name: "restart1", dataDir: data)
        let c = try first.connect()
        let sb = try c.result("sandbox.create", ["metadata": ["keep": "me"]])["sandboxId"]!.stringValue!
        _ = try c.result("exec.run", ["sandboxId": .string(sb), "shell": "echo kept > /home/user/file; sleep 1000 >/dev/null 2>&1 &"])
        // A second daemon may not take the same data dir.
        let rival = try? DaemonProcess(socket: true, name: "rival", dataDir: data)
        #expect(rival == nil)
        first.stop(signal: SIGKILL)
        // The agent notices its daemon is gone and takes the sandbox down with it.
        var tries = 0
        while !Host.pids(matching: "sleep 1000").isEmpty, tries < 200 { usleep(20_000); tries += 1 }
        #expect(Host.pids(matching: "sleep 1000").isEmpty)
        let second = try DaemonProcess(socket: true, name: "restart2", dataDir: data)
        defer { second.cleanup(); first.cleanup() }
        let c2 = try second.connect()
        let got = try c2.result("sandbox.get", ["sandboxId": .string(sb)])
        #expect(got["state"] == "hibernated")
        #expect(got["metadata"]?["keep"] == "me")
        // The writable layer is the sandbox's own ext4 image; read the file back out of it.
        let image = data + "/store/sandboxes/\(sb)/disk.img"
        #expect(Host.sh("debugfs -R 'cat /upper/home/user/file' '\(image)' 2>/dev/null").output == "kept\n")
        #expect(!Host.sh("losetup -j '\(image)'").output.contains(image), "the loop device is released with the sandbox")
        #expect(Host.cgroups(matching: sb).isEmpty)
        // The next request wakes it on its files; the processes are gone.
        let exec = try c2.result("exec.run", ["sandboxId": .string(sb), "shell": "cat /home/user/file; pgrep -c sleep"])
        #expect(exec["wake"]?["from"] == "hibernated" && exec["wake"]?["lost"] == ["processes", "memory"])
        #expect(c2.notifications.compactMap { $0["params"]?["data"]?.stringValue }.joined() == "kept\n0\n")
        _ = try c2.result("sandbox.delete", ["sandboxId": .string(sb)])
        #expect(!FileManager.default.fileExists(atPath: data + "/store/sandboxes/\(sb)"))
        #expect(second.stop() == 0)
        #expect(!Host.isMounted(data + "/store"))
    }

    @Test func cliRunStreamsAndReturnsTheExitCode() throws {
        let scratch = try TestEnv.scratch("cli")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let r = Host.sh("'\(TestEnv.sandpit)' run --data-dir '\(scratch)/data' -- sh -c 'echo out; echo err >&2; exit 7'")
        #expect(r.status == 7)
        #expect(r.output.contains("out\n") && r.output.contains("err\n"))
        let json = Host.sh("'\(TestEnv.sandpit)' run --json --data-dir '\(scratch)/data' -- python3 -c 'print(42)'")
        #expect(json.status == 0)
        let v = try JSONCodec.parse(json.output.split(separator: "\n").last.map(String.init) ?? "")
        #expect(v["result"]?["exitCode"] == 0)
        #expect(!Host.isMounted(scratch + "/data/store"))
    }

    @Test func warmPoolHandsOutWorkingSandboxesAndLeavesNothing() throws {
        let d = try DaemonProcess(socket: true, name: "warmpool", extraArgs: ["--warm-pool", "2"])
        defer { d.cleanup() }
        let c = try d.connect()
        func ready() -> Int64 { (try? c.result("server.info"))?["warmPool"]?["ready"]?.intValue ?? -1 }
        #expect(eventually { ready() == 2 })
        #expect(Host.agents().count == 2)
        // A pooled sandbox whose agent died is never handed out.
        let victim = Host.agents().first!
        kill(victim, SIGKILL)
        #expect(eventually { Host.agents().count == 1 })
        var ids: [String] = []
        for i in 0..<3 {
            let sb = try c.result("sandbox.create", ["metadata": ["n": .string("\(i)")]])
            #expect(sb["state"] == "running" && sb["metadata"]?["n"] == .string("\(i)"))
            let id = sb["sandboxId"]!.stringValue!
            ids.append(id)
            _ = try c.result("exec.run", ["sandboxId": .string(id), "shell": .string("echo $((\(i) + 40)) > /home/user/n")])
        }
        #expect(Set(ids).count == 3)
        for (i, id) in ids.enumerated() {
            c.notifications = []
            _ = try c.result("exec.run", ["sandboxId": .string(id), "shell": "cat /home/user/n"])
            #expect(c.notifications.first?["params"]?["data"] == .string("\(i + 40)\n"), "sandboxes share nothing")
        }
        // Overridden limits bypass the pool and still work.
        let tight = try c.result("sandbox.create", ["limits": ["pids": 32]])
        #expect(tight["limits"]?["pids"] == 32)
        #expect(try c.result("sandbox.list")["sandboxes"]?.arrayValue?.count == 4, "pooled sandboxes are not listed")
        #expect(eventually { ready() == 2 })
        #expect(d.stop() == 0)
        #expect(Host.agents().isEmpty)
        for id in ids + [tight["sandboxId"]!.stringValue!] { #expect(Host.cgroups(matching: id).isEmpty) }
        #expect(Host.cgroups(matching: "sb_").isEmpty, "pooled sandboxes' cgroups are gone too")
        #expect(!Host.isMounted(d.dataDir + "/store"))
    }
}
