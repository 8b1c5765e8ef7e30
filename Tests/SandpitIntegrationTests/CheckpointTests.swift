#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SandpitCore
import SandpitTestSupport

/// Checkpoints after every step, restore and fork, over the real protocol.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct CheckpointTests {
    /// A fingerprint of /home/user and /etc taken inside the sandbox: every
    /// path with its type, mode, owner, size and link target, plus every
    /// regular file's content hash.
    static let fingerprint = """
        cd / && find home/user etc -xdev -printf '%p %y %m %U %s %l\\n' 2>/dev/null | sort | sha256sum | cut -c1-16
        find home/user etc -xdev -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum 2>/dev/null | sha256sum | cut -c1-16
        """

    func fingerprint(_ a: Arena, _ sb: String) throws -> String { try a.sh(sb, Self.fingerprint).stdout }

    @Test func everyStepIsCheckpointedWithItsDiff() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            let s1 = try a.sh(sb, "echo one > /home/user/a; mkdir -p /home/user/empty; dd if=/dev/zero of=/home/user/sparse bs=1 count=1 seek=100M 2>/dev/null")
            let c1 = s1.result["checkpoint"]
            #expect(c1?["step"] == 1)
            #expect(c1?["diff"]?["added"] == 3)
            #expect(c1?["diff"]?["paths"]?["added"] == ["/home/user/a", "/home/user/empty", "/home/user/sparse"])
            let s2 = try a.sh(sb, "echo two >> /home/user/a; ln /home/user/a /home/user/hard; ln -s a /home/user/soft; chmod 600 /home/user/a")
            #expect(s2.result["checkpoint"]?["diff"]?["added"] == 2)
            #expect(s2.result["checkpoint"]?["diff"]?["modified"] == 1)
            #expect(s2.result["checkpoint"]?["diff"]?["paths"]?["modified"] == ["/home/user/a"])
            // Deleting a file of the template leaves a whiteout: a deletion.
            let s3 = try a.sh(sb, "rm /home/user/.bashrc /home/user/hard; rmdir /home/user/empty")
            #expect(s3.result["checkpoint"]?["diff"]?["deleted"] == 3)
            #expect(s3.result["checkpoint"]?["diff"]?["paths"]?["deleted"] == ["/home/user/.bashrc", "/home/user/empty", "/home/user/hard"])
            let list = try a.client.result("checkpoint.list", ["sandboxId": .string(sb)])["checkpoints"]!.arrayValue!
            #expect(list.map { $0["step"] } == [1, 2, 3])
            #expect(list[1]["parentId"] == list[0]["checkpointId"])
            // A named checkpoint, taken on request, keeps the step number.
            let named = try a.client.result("checkpoint.create", ["sandboxId": .string(sb), "name": "before-refactor"])
            #expect(named["step"] == 3 && named["name"] == "before-refactor")
            #expect(try a.client.result("sandbox.get", ["sandboxId": .string(sb)])["checkpointId"] == named["checkpointId"])
        }
    }

    @Test func restoreBringsBackEachStepExactly() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            let steps = [
                "echo hello > /home/user/f; mkdir -p /home/user/dir/sub; printf 'x%.0s' $(seq 5000) > /home/user/dir/big",
                "echo more >> /home/user/f; ln -s dir/big /home/user/link; ln /home/user/f /home/user/f2; chmod 700 /home/user/dir",
                "rm -rf /home/user/dir /home/user/.profile; echo new > /home/user/g; truncate -s 50M /home/user/holes",
                "mv /home/user/g /home/user/h; rm /home/user/f; mkdir /home/user/emptydir",
            ]
            var prints: [String] = [try fingerprint(a, sb)]
            for st in steps {
                let r = try a.sh(sb, st)
                #expect(r.result["exitCode"] == 0, "\(st): \(r.stderr)")
                prints.append(try fingerprint(a, sb))
            }
            // Steps were also taken by the fingerprint execs: find each step's checkpoint by its exec.
            let list = try a.client.result("checkpoint.list", ["sandboxId": .string(sb)])["checkpoints"]!.arrayValue!
            #expect(list.count == 9)
            for (i, expected) in prints.enumerated().reversed() where i > 0 {
                let step = 2 * i   // step 2i is the fingerprint after change i (checkpoint after it equals it)
                let r = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "step": .int(Int64(step))])
                #expect(r["restored"] == ["filesystem"] && r["lost"] == ["processes"])
                #expect(r["step"] == .int(Int64(step)))
                #expect(try fingerprint(a, sb) == expected, "step \(step) differs after restore")
            }
            // The next step after a restore continues from the restored one, on a new branch.
            let next = try a.sh(sb, "true")
            #expect(next.result["checkpoint"]?["step"] == 4)
            let all = try a.client.result("checkpoint.list", ["sandboxId": .string(sb)])["checkpoints"]!.arrayValue!
            #expect(all.count > list.count, "later steps stay listed")
        }
    }

    /// A step that changes no file shares its parent's image (no freeze, no
    /// clone); a same-size rewrite right after a checkpoint is still a change.
    @Test func unchangedStepsShareTheirParentAndQuickRewritesAreSeen() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            _ = try a.sh(sb, "echo a > /home/user/f")
            let same = try a.sh(sb, "cat /home/user/f >/dev/null")
            #expect(same.result["checkpoint"]?["diff"]?["added"] == 0 && same.result["checkpoint"]?["diff"]?["modified"] == 0)
            let rewrite = try a.sh(sb, "echo b > /home/user/f")
            #expect(rewrite.result["checkpoint"]?["diff"]?["modified"] == 1, "\(rewrite.result)")
            let dir = a.daemon.dataDir + "/store/sandboxes/" + sb + "/checkpoints/"
            func inode(_ ck: JSONValue?) -> UInt64 {
                var st = stat()
                return stat(dir + (ck?["checkpointId"]?.stringValue ?? "") + ".img", &st) == 0 ? UInt64(st.st_ino) : 0
            }
            let list = try a.client.result("checkpoint.list", ["sandboxId": .string(sb)])["checkpoints"]!.arrayValue!
            #expect(list.count == 3)
            #expect(inode(list[0]) != 0 && inode(list[0]) == inode(list[1]), "step 2 changed nothing: the same image")
            #expect(inode(list[2]) != inode(list[1]))
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "step": 2])
            #expect(try a.sh(sb, "cat /home/user/f").stdout == "a\n")
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "checkpointId": list[2]["checkpointId"]!])
            #expect(try a.sh(sb, "cat /home/user/f").stdout == "b\n")
            // An unchanged step's files are linked after its reply, under the
            // step lock: a restore sent right after the reply still finds them.
            let quiet = try a.sh(sb, "true")
            let named = quiet.result["checkpoint"]?["checkpointId"]
            #expect(named != nil && quiet.result["checkpoint"]?["diff"]?["modified"] == 0)
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "checkpointId": named!])
            #expect(try a.sh(sb, "cat /home/user/f").stdout == "b\n")
            #expect(inode(quiet.result["checkpoint"]) == inode(list[2]))
        }
    }

    @Test func restoreStopsRunningProcessesAndSaysSo() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            _ = try a.sh(sb, "echo v1 > /home/user/v")
            _ = try a.client.result("exec.run", ["sandboxId": .string(sb), "background": true, "shell": "echo v2 > /home/user/v; sleep 4848"])
            #expect(eventually { !Host.pids(matching: "sleep 4848").isEmpty })
            let r = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "step": 1])
            #expect(r["lost"] == ["processes"])
            #expect(Host.pids(matching: "sleep 4848").isEmpty)
            #expect(try a.sh(sb, "cat /home/user/v").stdout == "v1\n")
        }
    }

    @Test func forksAreIndependentAndShareNothing() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            _ = try a.sh(sb, "echo base > /home/user/shared; head -c 20000000 /dev/urandom > /home/user/blob")
            let base = try fingerprint(a, sb)
            let forks = try a.client.result("sandbox.fork", ["sandboxId": .string(sb), "count": 3])["sandboxes"]!.arrayValue!
            #expect(forks.count == 3)
            let ids = forks.map { $0["sandboxId"]!.stringValue! }
            for (i, f) in ids.enumerated() {
                #expect(try fingerprint(a, f) == base, "fork \(i) starts from the checkpoint")
                _ = try a.sh(f, "echo branch\(i) > /home/user/shared; echo \(i) > /home/user/only\(i)")
            }
            _ = try a.sh(sb, "echo parent > /home/user/shared")
            for (i, f) in ids.enumerated() {
                #expect(try a.sh(f, "cat /home/user/shared; ls /home/user | grep -c only").stdout == "branch\(i)\n1\n")
            }
            #expect(try a.sh(sb, "cat /home/user/shared; ls /home/user | grep -c only").stdout == "parent\n0\n")
            // Deleting the parent leaves the forks whole.
            _ = try a.client.result("sandbox.delete", ["sandboxId": .string(sb)])
            #expect(try a.sh(ids[0], "sha256sum < /home/user/blob | cut -c1-8; cat /home/user/shared").stdout.hasSuffix("branch0\n"))
            // A fork can itself be restored to its base.
            let baseCk = try a.client.result("checkpoint.list", ["sandboxId": .string(ids[1])])["checkpoints"]!.arrayValue![0]
            #expect(baseCk["step"] == forks[1]["step"])
            let r = try a.client.result("sandbox.restore", ["sandboxId": .string(ids[1]), "checkpointId": baseCk["checkpointId"]!])
            #expect(r["restored"] == ["filesystem"])
            #expect(try fingerprint(a, ids[1]) == base)
        }
    }

    @Test func storageReturnsToItsStartingSizeAfterDeletes() throws {
        try Arena.with { a in
            func used() throws -> Int64 { try a.client.result("storage.info")["usedBytes"]!.intValue! }
            // The bystander's disk and the cached blank image are in the baseline.
            let before = try used()
            let sb = try a.sandbox()
            _ = try a.sh(sb, "head -c 30000000 /dev/urandom > /home/user/r1")
            _ = try a.sh(sb, "head -c 30000000 /dev/urandom > /home/user/r2")
            let forks = try a.client.result("sandbox.fork", ["sandboxId": .string(sb), "count": 2])["sandboxes"]!.arrayValue!
            _ = try a.sh(forks[0]["sandboxId"]!.stringValue!, "head -c 10000000 /dev/urandom > /home/user/r3")
            #expect(try used() > before + (50 << 20))
            for id in [sb] + forks.map({ $0["sandboxId"]!.stringValue! }) {
                _ = try a.client.result("sandbox.delete", ["sandboxId": .string(id)])
            }
            // XFS frees the blocks of unlinked files in the background: give it a moment.
            #expect(eventually { ((try? used()) ?? .max) - before < 4 << 20 }, "store used \(before) before, \((try? used()) ?? -1) after")
        }
    }

    /// Issue 27: checkpoints kept the blocks of data written and deleted
    /// within a step (the image was cloned with them), so the store grew by
    /// everything a sandbox ever wrote. 20 steps × 400 MiB written, flushed
    /// and deleted must leave the store about where it was.
    @Test func writingAndDeletingEveryStepDoesNotGrowTheStore() throws {
        try Arena.with { a in
            func used() throws -> Int64 { try a.client.result("storage.info")["usedBytes"]!.intValue! }
            let sb = try a.sandbox()
            _ = try a.sh(sb, "echo warm > /home/user/w")
            let before = try used()
            for i in 1...20 {
                let r = try a.sh(sb, "head -c 400M /dev/zero > /home/user/big && sync /home/user/big && rm /home/user/big && echo \(i) > /home/user/n")
                #expect(r.result["exitCode"] == 0 && r.result["checkpoint"]?["checkpointId"] != nil, "step \(i): \(r.result)")
            }
            let grown = try used() - before
            #expect(grown < 64 << 20, "the store grew by \(grown >> 20) MiB over 20 steps that kept nothing")
            let list = try a.client.result("checkpoint.list", ["sandboxId": .string(sb)])
            #expect(list["checkpoints"]?.arrayValue?.count == 21)
        }
    }

    /// Issue 27: a sandbox's checkpoints are counted against its policy's
    /// `checkpointBytes`; under `prune` the oldest without a name go first
    /// (never the head, never a named one).
    @Test func checkpointQuotaPrunesTheOldestUnnamed() throws {
        try Arena.with { a in
            let quota: Int64 = 10 << 20
            let sb = try a.sandbox(limits: ["checkpointBytes": .int(quota)])
            func list() throws -> JSONValue { try a.client.result("checkpoint.list", ["sandboxId": .string(sb)]) }
            _ = try a.sh(sb, "head -c 3000000 /dev/urandom > /home/user/f1")          // step 1: 3 MB
            let named = try a.client.result("checkpoint.create", ["sandboxId": .string(sb), "name": "keep"])
            for i in 2...6 { _ = try a.sh(sb, "head -c 3000000 /dev/urandom > /home/user/f\(i)") }   // 3 MB each
            let l = try list()
            let cks = l["checkpoints"]?.arrayValue ?? []
            #expect(l["quotaBytes"] == .int(quota))
            #expect((l["bytes"]?.intValue ?? .max) <= quota, "\(l)")
            // Kept: the named one and the newest steps; the oldest unnamed ones went.
            #expect(cks.contains { $0["checkpointId"] == named["checkpointId"] })
            #expect(cks.last?["step"] == 6)
            #expect(!cks.contains { $0["step"] == 2 }, "step 2 should have been pruned: \(cks.map { $0["step"] })")
            // What is left restores exactly; a pruned step is gone.
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "step": 5])
            #expect(try a.sh(sb, "ls /home/user | grep -c '^f'").stdout == "5\n")
            #expect(try a.client.call("sandbox.restore", ["sandboxId": .string(sb), "step": 2])["error"]?["data"]?["code"] == "not_found")
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "checkpointId": named["checkpointId"]!])
            #expect(try a.sh(sb, "ls /home/user | grep '^f'").stdout == "f1\n")
        }
    }

    /// Under `refuse` a checkpoint that would pass the quota is not taken:
    /// the step counts, the reply says why, the older ones stay.
    @Test func checkpointQuotaRefusesWhenThePolicySaysSo() throws {
        try Arena.with { a in
            let sb = try a.sandbox(limits: ["checkpointBytes": .int(5 << 20), "checkpointQuota": "refuse"])
            let s1 = try a.sh(sb, "head -c 3000000 /dev/urandom > /home/user/f1")
            #expect(s1.result["checkpoint"]?["step"] == 1)
            let s2 = try a.sh(sb, "head -c 3000000 /dev/urandom > /home/user/f2")
            #expect(s2.result["step"] == 2 && s2.result["checkpoint"] == .null)
            #expect(s2.result["checkpointError"]?.stringValue?.contains("checkpointBytes") == true, "\(s2.result)")
            let e = try a.client.call("checkpoint.create", ["sandboxId": .string(sb)])["error"]
            #expect(e?["data"]?["code"] == "limit_exceeded" && e?["data"]?["quotaBytes"] == .int(5 << 20), "\(String(describing: e))")
            let l = try a.client.result("checkpoint.list", ["sandboxId": .string(sb)])
            #expect(l["checkpoints"]?.arrayValue?.map { $0["step"] } == [1])
            // The head is still step 1's: a restore to it works and drops f2.
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "step": 1])
            #expect(try a.sh(sb, "ls /home/user | grep '^f'").stdout == "f1\n")
        }
    }

    /// Issue 27: bytes flipped in a checkpoint's image were restored
    /// silently. A damaged checkpoint is refused before anything is touched.
    /// A checkpoint holds every writer of the sandbox's disk: its processes
    /// (its cgroup frozen, then a sync) or, when that cannot be, the whole
    /// filesystem (FIFREEZE); the daemon's own file calls wait for it either
    /// way. With a process and the file API writing as fast as they can, every
    /// checkpoint is a consistent filesystem, and restores.
    @Test func checkpointsTakenWhileEverythingWritesAreConsistent() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            // In the sandbox: creates, appends, renames and deletes, without pause.
            let bg = try a.client.result("exec.run", ["sandboxId": .string(sb), "background": true, "shell": """
                i=0; while :; do i=$((i+1)); echo $i >> /home/user/log; head -c 65536 /dev/urandom > /home/user/f.$((i % 7))
                mv /home/user/f.$((i % 7)) /home/user/g.$((i % 5)); rm -f /home/user/g.$((i % 3)); done
                """])
            // Through the file API, from another connection: 64 KiB files, a few ms apart (so a checkpoint
            // finds it writing at times, and idle at others).
            let other = try a.daemon.connect()
            final class Flag: @unchecked Sendable { let lock = NSLock(); var stop = false; var written = 0 }
            let flag = Flag()
            let blob = Base64.encode([UInt8]((0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 31) }))
            let done = DispatchSemaphore(value: 0)
            Thread {
                var k = 0
                while !flag.lock.withLock({ flag.stop }) {
                    if (try? other.result("fs.write", ["sandboxId": .string(sb), "path": .string("/home/user/api.\(k % 4)"), "data": .string(blob)])) != nil {
                        flag.lock.withLock { flag.written += 1 }
                    }
                    k += 1
                    usleep(useconds_t(1_000 + (k % 5) * 1_000))
                }
                done.signal()
            }.start()
            var cks: [String] = []
            for k in 0..<12 {
                usleep(useconds_t(10_000 + k * 12_000))
                cks.append(try a.client.result("checkpoint.create", ["sandboxId": .string(sb)])["checkpointId"]!.stringValue!)
            }
            flag.lock.withLock { flag.stop = true }
            done.wait()
            _ = try a.client.result("exec.kill", ["sandboxId": .string(sb), "execId": bg["execId"]!])
            #expect(flag.lock.withLock { flag.written } > 10, "the file API wrote meanwhile")
            let dir = a.daemon.dataDir + "/store/sandboxes/\(sb)/checkpoints/"
            for ck in cks {
                let fsck = Host.sh("e2fsck -fn '\(dir)\(ck).img' 2>&1")
                #expect(fsck.status == 0, "\(ck): \(fsck.output)")
            }
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "checkpointId": .string(cks[6])])
            let r = try a.sh(sb, "tail -n1 /home/user/log | grep -c '^[0-9][0-9]*$'; for f in /home/user/api.*; do wc -c < $f; done | sort -u")
            #expect(r.stdout == "1\n65536\n", "\(r.stdout)")
        }
    }

    @Test func aDamagedCheckpointIsRefusedAndTheSandboxIsLeftAsItWas() throws {
        try Arena.with { a in
            let sb = try a.sandbox()
            let s1 = try a.sh(sb, "echo good > /home/user/f")
            let good = s1.result["checkpoint"]?["checkpointId"]?.stringValue ?? ""
            let s2 = try a.sh(sb, "echo later > /home/user/f; head -c 100000 /dev/urandom > /home/user/r")
            let bad = s2.result["checkpoint"]?["checkpointId"]?.stringValue ?? ""
            _ = try a.sh(sb, "echo now > /home/user/f")
            let dir = a.daemon.dataDir + "/store/sandboxes/\(sb)/checkpoints/"
            // Its checksum is written in the background, just after the reply.
            #expect(eventually { FileManager.default.fileExists(atPath: dir + bad + ".img.sum") })
            // Flip one byte in the middle of the image's data.
            let fd = open(dir + bad + ".img", O_RDWR)
            #expect(fd >= 0)
            let data = lseek(fd, 1 << 20, 3 /* SEEK_DATA */)
            var byte: UInt8 = 0
            #expect(data >= 0 && pread(fd, &byte, 1, data + 777) == 1)
            byte ^= 0x5a
            #expect(pwrite(fd, &byte, 1, data + 777) == 1)
            close(fd)
            for (method, extra) in [("sandbox.restore", JSONObject()), ("sandbox.fork", ["count": 1])] {
                var p: JSONObject = ["sandboxId": .string(sb), "checkpointId": .string(bad)]
                for (k, v) in extra { p[k] = v }
                let e = try a.client.call(method, .object(p))["error"]
                #expect(e?["code"] == -32052 && e?["data"]?["code"] == "checkpoint_corrupt" && e?["data"]?["checkpointId"] == .string(bad),
                        "\(method): \(String(describing: e))")
            }
            // Untouched: still running, its files as they were, its head where it was.
            let now = try a.sh(sb, "cat /home/user/f")
            #expect(now.stdout == "now\n" && now.result["exitCode"] == 0)
            #expect(try a.client.result("sandbox.get", ["sandboxId": .string(sb)])["state"] == "running")
            #expect(try a.client.result("sandbox.list")["sandboxes"]?.arrayValue?.count == 2, "no fork was made")
            // A sound checkpoint still restores.
            _ = try a.client.result("sandbox.restore", ["sandboxId": .string(sb), "checkpointId": .string(good)])
            #expect(try a.sh(sb, "cat /home/user/f").stdout == "good\n")
        }
    }

    @Test func manualAndOffModesAndDisklessPolicies() throws {
        try Arena.with { a in
            let manual = try a.sandbox(limits: ["checkpoints": "manual"])
            let r = try a.sh(manual, "echo x > /home/user/x")
            #expect(r.result["checkpoint"] == nil && r.result["step"] == 1)
            #expect(try a.client.result("checkpoint.list", ["sandboxId": .string(manual)])["checkpoints"] == [])
            let ck = try a.client.result("checkpoint.create", ["sandboxId": .string(manual)])
            #expect(ck["diff"]?["added"] == 1)
            let off = try a.sandbox(limits: ["checkpoints": "off"])
            #expect(try a.sh(off, "true").result["checkpoint"] == nil)
            let missing = try a.client.call("sandbox.restore", ["sandboxId": .string(off), "step": 1])
            #expect(missing["error"]?["data"]?["code"] == "not_found")
        }
    }

    /// SIGKILL (via the daemon's crash points) in the middle of a checkpoint
    /// or a restore: after restart the catalog lists only whole checkpoints,
    /// stray files are gone, and the sandbox restores to any listed one.
    @Test(arguments: ["checkpoint.cloned", "checkpoint.files-written", "restore.cloned"])
    func crashMidOperationLeavesOldOrNewState(point: String) throws {
        let scratch = try TestEnv.scratch("crash")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let data = scratch + "/data"
        setenv("SANDPIT_CRASH_AT", point, 1)
        let first = try DaemonProcess(socket: true, name: "crash1", dataDir: data)
        unsetenv("SANDPIT_CRASH_AT")
        defer { first.cleanup() }
        let c = try first.connect()
        let sb = try c.result("sandbox.create")["sandboxId"]!.stringValue!
        if point == "restore.cloned" {
            // Restore needs a checkpoint to exist first: take one by hand (a different crash point).
            _ = try c.result("exec.run", ["sandboxId": .string(sb), "shell": "echo keep > /home/user/k", "timeoutMs": 10000])
        } else {
            _ = try? c.call("exec.run", ["sandboxId": .string(sb), "shell": "echo lost > /home/user/k"], timeout: 10)
        }
        if point == "restore.cloned" { _ = try? c.call("sandbox.restore", ["sandboxId": .string(sb), "step": 1], timeout: 10) }
        #expect(eventually { !first.process.isRunning }, "the daemon reached \(point)")
        let second = try DaemonProcess(socket: true, name: "crash2", dataDir: data)
        defer { second.cleanup() }
        let c2 = try second.connect()
        let list = try c2.result("checkpoint.list", ["sandboxId": .string(sb)])["checkpoints"]!.arrayValue!
        let dir = data + "/store/sandboxes/\(sb)/checkpoints"
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        #expect(!files.contains { $0.hasSuffix(".tmp") }, "half-written files are cleaned up: \(files)")
        #expect(Set(files.filter { $0.hasSuffix(".img") }.map { String($0.dropLast(4)) }) == Set(list.compactMap { $0["checkpointId"]?.stringValue }))
        for ck in list {
            let r = try c2.result("sandbox.restore", ["sandboxId": .string(sb), "checkpointId": ck["checkpointId"]!])
            #expect(r["state"] == "running")
        }
        if point == "restore.cloned" {
            c2.notifications = []
            _ = try c2.result("exec.run", ["sandboxId": .string(sb), "shell": "cat /home/user/k"])
            #expect(c2.notifications.first?["params"]?["data"] == "keep\n")
        }
    }
}
