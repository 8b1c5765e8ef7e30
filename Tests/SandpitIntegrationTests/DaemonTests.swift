#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import Testing
import SandpitCore
import SandpitTestSupport

/// These tests start the real `sandpit serve` binary and speak the real
/// protocol. Creating sandboxes needs root (uid-range user namespaces,
/// cgroups, overlay); without it they are skipped.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct DaemonTests {
    func create(_ c: LineConnection, _ params: JSONValue = [:]) throws -> String {
        let r = try c.result("sandbox.create", params)
        #expect(r["state"] == "running")
        return r["sandboxId"]!.stringValue!
    }

    func run(_ c: LineConnection, _ sb: String, shell: String, _ extra: JSONObject = [:]) throws -> (result: JSONValue, stdout: String, stderr: String, notes: [JSONValue]) {
        try c.exec(sb, shell: shell, extra)
    }

    @Test func createExecStreamDeleteOverStdio() throws {
        try withDaemon(socket: false) { d in
            let c = try d.connect()
            let sb = try create(c, ["metadata": ["purpose": "test"]])
            let out = try run(c, sb, shell: "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done; exit 3")
            #expect(out.result["exitCode"] == 3)
            #expect(out.stdout == "out1\nout2\nout3\n")
            #expect(out.stderr == "err1\nerr2\nerr3\n")
            let seqs = out.notes.map { $0["seq"]!.intValue! }
            #expect(seqs == Array(0..<Int64(seqs.count)))
            #expect(out.notes.allSatisfy { $0["requestId"] != nil && $0["execId"] == out.result["execId"] })
            let t = out.result["timings"]!
            #expect(t["queueUs"]!.intValue! >= 0 && t["spawnUs"]!.intValue! > 0 && t["runUs"]!.intValue! > 0)
            #expect(out.result["stdoutBytes"] == 15)
            let got = try c.result("sandbox.get", ["sandboxId": .string(sb)])
            #expect(got["metadata"]?["purpose"] == "test")
            #expect(got["step"] == 1)
            _ = try c.result("sandbox.delete", ["sandboxId": .string(sb)])
            let gone = try c.call("sandbox.get", ["sandboxId": .string(sb)])
            #expect(gone["error"]?["data"]?["code"] == "not_found")
            // EOF on stdin shuts the daemon down cleanly.
            Glibc.close(c.writeFd)
            d.process.waitUntilExit()
            #expect(d.process.terminationStatus == 0)
        }
    }

    @Test func everyErrorClassGetsATypedAnswerAndTheConnectionSurvives() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            c.send("this is not json")
            #expect(c.readMessage()?["error"]?["code"] == -32700)
            c.sendRaw([0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D, 0x0A]) // invalid UTF-8
            #expect(c.readMessage()?["error"]?["code"] == -32700)
            c.send(#"{"jsonrpc":"2.0","id":1}"#)
            #expect(c.readMessage()?["error"]?["code"] == -32600)
            let unknown = try c.call("no.such.method")
            #expect(unknown["error"]?["code"] == -32601)
            let bad = try c.call("exec.run", ["sandboxId": 5])
            #expect(bad["error"]?["code"] == -32602)
            #expect(bad["error"]?["message"]?.stringValue?.contains("sandboxId") == true)
            let missing = try c.call("exec.run", ["sandboxId": "sb_AAAAAAAAAAAA", "shell": "true"])
            #expect(missing["error"]?["data"]?["code"] == "not_found")
            #expect((-32099 ... -32000).contains(missing["error"]!["code"]!.intValue!))
            let typo = try c.call("sandbox.create", ["templat": "default"])
            #expect(typo["error"]?["data"]?["field"] == "templat")
            let pathy = try c.call("sandbox.get", ["sandboxId": "../../etc/passwd"])
            #expect(pathy["error"]?["data"]?["code"] == "not_found")
            // Still serving, on this connection and a new one.
            #expect(try c.result("server.info")["backend"] == "linux-namespaces")
            #expect(try d.connect().result("server.info")["cgroup"] != nil)
        }
    }

    /// The child that becomes a sandbox's agent shares the daemon's memory
    /// until it execs; when that exec fails it must still report why, die,
    /// and leave no cgroup, sandbox or process behind.
    @Test func anAgentThatCannotStartFailsCreateCleanly() throws {
        let dir = try TestEnv.scratch("notagent")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bogus = dir + "/not-an-agent"
        try "neither an ELF binary nor a script\n".write(toFile: bogus, atomically: true, encoding: .utf8)
        chmod(bogus, 0o755)
        let d = try DaemonProcess(socket: true, name: "notagent", environment: ["SANDPIT_AGENT": bogus])
        defer { d.cleanup() }
        let c = try d.connect()
        for _ in 0..<3 {
            let r = try c.call("sandbox.create")
            #expect(r["error"]?["data"]?["code"] == "sandbox_failed")
            #expect(r["error"]?["message"]?.stringValue?.contains("execveat agent: errno \(ENOEXEC)") == true, "\(r)")
        }
        #expect(try c.result("sandbox.list")["sandboxes"] == [])
        #expect(Host.cgroups(matching: "sb_").isEmpty)
        #expect(Host.pids(matching: bogus).isEmpty)
        #expect(try c.result("server.info")["backend"] == "linux-namespaces", "still serving")
    }

    /// Lines of 256 KiB or more are parsed and served on the task pool, not
    /// the control loop: the same answers, errors included, come back.
    @Test func bulkRequestLinesGetTheSameAnswers() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try create(c)
            c.send("{" + String(repeating: "x", count: 300 << 10))
            #expect(c.readMessage()?["error"]?["code"] == -32700)
            let text = String(repeating: "0123456789abcdef", count: 20 << 10)   // 320 KiB
            _ = try c.result("fs.write", ["sandboxId": .string(sb), "path": "big.txt", "text": .string(text)])
            let back = try c.result("fs.read", ["sandboxId": .string(sb), "path": "big.txt"])
            let same = back["data"]?.stringValue.flatMap(Base64.decode) == Array(text.utf8)
            #expect(same, "fs.read gave back what fs.write wrote")
            let bad = try c.call("fs.write", ["sandboxId": .string(sb), "path": "../../etc/x", "text": .string(text)])
            #expect(bad["error"]?["data"]?["code"] != nil)
            #expect(try c.result("server.info")["backend"] == "linux-namespaces")
            _ = try c.result("sandbox.delete", ["sandboxId": .string(sb)])
        }
    }

    @Test func oversizedLinesAreRejectedAndTheStreamRecovers() throws {
        let d = try DaemonProcess(socket: true, name: "oversized", extraArgs: ["--max-line-bytes", "4096"])
        defer { d.cleanup() }
        let c = try d.connect()
        c.send(#"{"jsonrpc":"2.0","id":1,"method":"server.info","params":{"pad":""# + String(repeating: "x", count: 100_000) + #""}}"#)
        let e = c.readMessage()
        #expect(e?["error"]?["data"]?["code"] == "request_too_large")
        // The id is read from the line's first bytes, so the caller waiting for it gets its answer.
        #expect(e?["id"] == 1)
        c.send(#"{"jsonrpc":"2.0","method":"server.info","params":{"pad":""# + String(repeating: "x", count: 100_000) + #""},"id":"late"}"#)
        #expect(c.readMessage()?["id"] == .null)
        #expect(try c.result("server.info")["limits"]?["maxLineBytes"] == 4096)
    }

    @Test func pipelinedRequestsAreAnsweredOutOfOrder() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try create(c)
            c.send(JSONCodec.encode(["jsonrpc": "2.0", "id": "slow", "method": "exec.run", "params": ["sandboxId": .string(sb), "shell": "sleep 0.5; echo done"]]))
            c.send(JSONCodec.encode(["jsonrpc": "2.0", "id": "fast", "method": "server.info"]))
            var order: [String] = []
            while order.count < 2, let m = c.readMessage() {
                if let id = m["id"]?.stringValue { order.append(id) }
            }
            #expect(order == ["fast", "slow"])
        }
    }

    @Test func concurrentClientsDoNotBlockEachOther() throws {
        try withDaemon(socket: true) { d in
            let n = 4
            let ok = Atomic<Int>(0)
            DispatchQueue.concurrentPerform(iterations: n) { i in
                do {
                    let c = try d.connect()
                    let sb = try create(c)
                    let r = try run(c, sb, shell: "echo client\(i)")
                    if r.stdout == "client\(i)\n" { ok.add(1, ordering: .relaxed) }
                    _ = try c.result("sandbox.delete", ["sandboxId": .string(sb)])
                    c.close()
                } catch {}
            }
            #expect(ok.load(ordering: .relaxed) == n)
            // A client that connects and never sends anything blocks no one.
            let idle = try d.connect()
            defer { idle.close() }
            #expect(try d.connect().result("server.info")["sandboxes"] == 0)
        }
    }

    @Test func clientVanishingMidStreamLeavesTheDaemonServing() throws {
        try withDaemon(socket: true) { d in
            let owner = try d.connect()
            let sb = try create(owner)
            let flaky = try d.connect()
            flaky.send(JSONCodec.encode(["jsonrpc": "2.0", "id": 1, "method": "exec.run",
                                         "params": ["sandboxId": .string(sb), "shell": "yes sandpit | head -c 20000000; sleep 0.2; echo end"]]))
            #expect(flaky.readMessage()?["method"] == "exec.output")
            flaky.close()
            // Others keep working, including on the same sandbox.
            let r = try run(owner, sb, shell: "echo still-here")
            #expect(r.stdout == "still-here\n")
            _ = try owner.result("sandbox.delete", ["sandboxId": .string(sb)])
            #expect(Host.agents().isEmpty)
            // A client that left is not the daemon's error: nothing is logged as internal.
            #expect(!d.log.contains("internal error"), "\(d.log.split(separator: "\n").filter { $0.contains("internal error") })")
        }
    }

    @Test func outputThatIsNotUTF8IsSentAsBase64() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try create(c)
            let r = try run(c, sb, shell: #"printf 'ok\377\376'"#)
            let n = r.notes.first!
            #expect(n["encoding"] == "base64")
            #expect(Base64.decode(n["data"]!.stringValue!) == [0x6F, 0x6B, 0xFF, 0xFE])
        }
    }

    @Test func argvEnvCwdAndStdinArePassedThrough() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try create(c)
            c.notifications = []
            let r = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["python3", "-c", "import os,sys; print(os.getcwd(), os.environ['GREETING'], sys.stdin.read().upper(), len(sys.argv))", "a b"],
                                              "env": ["GREETING": "hej"], "cwd": "/tmp", "stdin": "piped"])
            #expect(r["exitCode"] == 0)
            // Unbuffered output may arrive in several chunks; together they are the line.
            let stdout = c.notifications.compactMap { $0["params"]?["data"]?.stringValue }.joined()
            #expect(stdout == "/tmp hej PIPED 2\n")
        }
    }

    @Test func missingProgramsAndBadCwdReportWhy() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try create(c)
            let r = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["definitely-not-a-program"]])
            #expect(r["exitCode"] == 127)
            #expect(r["spawnError"]?.stringValue?.contains("No such file") == true)
            let cwd = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["true"], "cwd": "/nope"])
            #expect(cwd["spawnError"]?.stringValue?.contains("/nope") == true)
        }
    }

    @Test func timeoutsKillAndKeepOutputSoFar() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try create(c)
            let r = try run(c, sb, shell: "echo before; sleep 30; echo after", ["timeoutMs": 300])
            #expect(r.result["timedOut"] == true)
            #expect(r.result["signal"] == "SIGKILL")
            #expect(r.stdout == "before\n")
        }
    }

    @Test func backgroundExecsKillAndLogs() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            let sb = try create(c)
            let bg = try c.result("exec.run", ["sandboxId": .string(sb), "shell": "echo started; exec sleep 60", "background": true])
            let execId = bg["execId"]!
            #expect(bg["state"] == "running")
            var logs = JSONValue.null
            for _ in 0..<100 {
                logs = try c.result("exec.logs", ["sandboxId": .string(sb), "execId": execId])
                if logs["chunks"]?.arrayValue?.isEmpty == false { break }
                usleep(20_000)
            }
            #expect(logs["chunks"]?.arrayValue?.first?["data"] == "started\n")
            #expect(logs["done"] == false)
            _ = try c.result("exec.kill", ["sandboxId": .string(sb), "execId": execId, "signal": "TERM"])
            for _ in 0..<100 {
                logs = try c.result("exec.logs", ["sandboxId": .string(sb), "execId": execId, "sinceSeq": 1])
                if logs["done"] == true { break }
                usleep(20_000)
            }
            #expect(logs["done"] == true)
            #expect(logs["chunks"]?.arrayValue?.isEmpty == true)
            #expect(logs["result"]?["signal"] == "SIGTERM")
        }
    }

    @Test func listFiltersByMetadataAndStateAndPages() throws {
        try withDaemon(socket: true) { d in
            let c = try d.connect()
            var mine: [String] = []
            for i in 0..<5 { mine.append(try create(c, ["metadata": ["batch": i % 2 == 0 ? "even" : "odd"]])) }
            let even = try c.result("sandbox.list", ["metadata": ["batch": "even"]])["sandboxes"]!.arrayValue!
            #expect(even.count == 3)
            var seen: [String] = []
            var cursor: JSONValue = .null
            repeat {
                let page = try c.result("sandbox.list", ["limit": 2, "cursor": cursor, "state": "running"])
                seen += page["sandboxes"]!.arrayValue!.map { $0["sandboxId"]!.stringValue! }
                cursor = page["nextCursor"] ?? .null
            } while cursor != .null
            #expect(seen == mine)
            let bad = try c.call("sandbox.list", ["cursor": "garbage!"])
            #expect(bad["error"]?["data"]?["field"] == "cursor")
        }
    }
}
