#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import Testing
import SandpitCore
import SandpitTestSupport

/// Global caps: idle sandboxes make room by hibernating, busy ones make
/// requests wait in a fair queue with an optional deadline.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct AdmissionTests {
    @Test func idleSandboxesAreHibernatedToMakeRoom() throws {
        let d = try DaemonProcess(socket: true, name: "admit-lru", extraArgs: ["--max-sandboxes", "2"])
        defer { d.cleanup() }
        let c = try d.connect()
        let s1 = try c.result("sandbox.create")["sandboxId"]!.stringValue!
        let s2 = try c.result("sandbox.create")["sandboxId"]!.stringValue!
        _ = try c.result("exec.run", ["sandboxId": .string(s2), "shell": "echo two > /home/user/f"])   // s1 is now the least recently used
        let s3 = try c.result("sandbox.create")
        #expect(s3["state"] == "running")
        #expect(try c.result("sandbox.get", ["sandboxId": .string(s1)])["state"] == "hibernated")
        #expect(try c.result("sandbox.get", ["sandboxId": .string(s2)])["state"] == "running")
        let usage = try c.result("server.info")["usage"]!
        #expect(usage["sandboxes"] == 2 && usage["maxSandboxes"] == 2 && usage["hibernated"] == 1)
        // Waking s1 in turn makes room by hibernating another idle one.
        let woke = try c.result("exec.run", ["sandboxId": .string(s1), "shell": "true"])
        #expect(woke["wake"]?["from"] == "hibernated")
        #expect(try c.result("server.info")["usage"]?["sandboxes"] == 2)
    }

    @Test func busySandboxesMakeCreatesWaitUntilRoomOrDeadline() throws {
        let d = try DaemonProcess(socket: true, name: "admit-wait", extraArgs: ["--max-sandboxes", "1"])
        defer { d.cleanup() }
        let c = try d.connect()
        let s1 = try c.result("sandbox.create")["sandboxId"]!.stringValue!
        _ = try c.result("sandbox.keepalive", ["sandboxId": .string(s1), "forMs": 60000])   // not idle: cannot be hibernated
        let late = try c.call("sandbox.create", ["queueTimeoutMs": 300])
        #expect(late["error"]?["data"]?["code"] == "busy")
        #expect(c.notifications.contains { $0["method"] == "queued" && $0["params"]?["position"] == 1 && $0["params"]?["waitingFor"] == "sandbox" })
        // Without a deadline the request waits; deleting s1 lets it through.
        let waiter = try d.connect()
        waiter.send(#"{"jsonrpc":"2.0","id":77,"method":"sandbox.create","params":{}}"#)
        #expect(waiter.readMessage()?["method"] == "queued")
        _ = try c.result("sandbox.delete", ["sandboxId": .string(s1)])
        let got = waiter.readMessage()
        #expect(got?["id"] == 77 && got?["result"]?["state"] == "running")
        #expect((got?["result"]?["timings"]?["queueUs"]?.intValue ?? 0) > 0)
    }

    @Test func execQueueIsFairBetweenClients() throws {
        let d = try DaemonProcess(socket: true, name: "admit-fair", extraArgs: ["--max-execs", "2"])
        defer { d.cleanup() }
        let a = try d.connect(), b = try d.connect()
        let sa = try a.result("sandbox.create")["sandboxId"]!.stringValue!
        let sb = try b.result("sandbox.create")["sandboxId"]!.stringValue!
        // A floods the queue first; B arrives after with two.
        for i in 1...6 {
            a.send(JSONCodec.encode(["jsonrpc": "2.0", "id": .int(Int64(i)), "method": "exec.run",
                                     "params": ["sandboxId": .string(sa), "shell": "sleep 0.4"]]))
        }
        usleep(150_000)
        for i in 1...2 {
            b.send(JSONCodec.encode(["jsonrpc": "2.0", "id": .int(Int64(100 + i)), "method": "exec.run",
                                     "params": ["sandboxId": .string(sb), "shell": "sleep 0.4"]]))
        }
        final class Done: Sendable { let list = Mutex<[String]>([]) }
        let done = Done()
        let readers = [("a", a, 6), ("b", b, 2)].map { name, conn, n in
            Thread {
                var left = n
                while left > 0, let m = conn.readMessage(timeout: 60) {
                    if let id = m["id"]?.intValue, m["result"] != nil { done.list.withLock { $0.append("\(name)\(id > 100 ? id - 100 : id)") }; left -= 1 }
                }
            }
        }
        readers.forEach { $0.start() }
        #expect(eventually { done.list.withLock { $0.count } == 8 })
        let order = done.list.withLock { $0 }
        // Round-robin: B's second exec is granted before A's fifth, so it finishes first.
        let bLast = order.firstIndex(of: "b2") ?? 99, a5 = order.firstIndex(of: "a5") ?? -1
        #expect(bLast < a5, "B starved: \(order)")
    }
}
