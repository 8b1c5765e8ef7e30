import Testing
@testable import SandpitCore

/// Batch task lines and verdicts: pure logic, no sandboxes.
@Suite struct BatchTests {
    func parse(_ json: String) throws -> BatchTask {
        try BatchTask.parse(try JSONCodec.parse(Array(json.utf8)), at: "tasks[0]")
    }

    @Test func tasksParseCmdCodeFilesSetupAndExpect() throws {
        let a = try parse(#"{"id":"a","cmd":"echo hi","timeoutMs":500,"expect":{"stdout":"hi"}}"#)
        #expect(a.run == .shell("echo hi") && a.timeoutMs == 500 && a.expect?.stdout == "hi" && a.baseKey == nil)
        let b = try parse(#"{"id":7,"cmd":["python3","-V"]}"#)
        #expect(b.id == "7" && b.run == .argv(["python3", "-V"]))
        let c = try parse(#"{"id":"c","code":"print(1)","files":{"x.txt":"1"},"setup":"pip list"}"#)
        #expect(c.run == .python("print(1)") && c.setup == ["pip list"] && c.files.map(\.path) == ["x.txt"])
        let d = try parse(#"{"id":"d","code":"print(2)","files":{"x.txt":"1"},"setup":["pip list"]}"#)
        #expect(c.baseKey != nil && c.baseKey == d.baseKey, "same files and setup share a base")
        let e = try parse(#"{"id":"e","code":"print(2)","files":{"x.txt":"2"},"setup":["pip list"]}"#)
        #expect(e.baseKey != d.baseKey)
    }

    @Test func badTasksNameTheField() {
        func field(_ json: String) -> String? {
            do { _ = try parse(json); return nil } catch { return (error as? SandpitError)?.details["field"]?.stringValue }
        }
        #expect(field(#"{"cmd":"x"}"#) == "tasks[0].id")
        #expect(field(#"{"id":"a"}"#) == "tasks[0].cmd")
        #expect(field(#"{"id":"a","cmd":"x","code":"y"}"#) == "tasks[0].code")
        #expect(field(#"{"id":"a","cmd":"x","timeout":5}"#) == "tasks[0].timeout")
        #expect(field(#"{"id":"a","cmd":"x","timeoutMs":0}"#) == "tasks[0].timeoutMs")
        #expect(field(#"{"id":"a","cmd":"x","expect":{"stderr":"no"}}"#) == "tasks[0].expect.stderr")
        #expect(field(#"{"id":"a","cmd":[]}"#) == "tasks[0].cmd")
    }

    @Test func verdicts() {
        func judge(_ code: Int, out: String = "", timedOut: Bool = false, oom: Bool = false, signal: Int32? = nil,
                   _ expect: BatchTask.Expect? = nil) -> BatchStatus {
            BatchStatus.judge(exitCode: code, signal: signal, timedOut: timedOut, oomKilled: oom, stdout: out, expect: expect).0
        }
        #expect(judge(0) == .passed)
        #expect(judge(1) == .failed)
        #expect(judge(137, timedOut: true) == .timeout)
        #expect(judge(137, oom: true) == .oom)
        #expect(judge(137, timedOut: true, oom: true) == .timeout, "a timeout is reported as the cause")
        #expect(judge(0, signal: 11) == .failed)
        #expect(judge(2, .init(exitCode: 2)) == .passed)
        #expect(judge(0, out: "42\n", .init(stdout: "42")) == .passed, "trailing whitespace is ignored")
        #expect(judge(0, out: "43\n", .init(stdout: "42")) == .failed)
        #expect(judge(0, out: "all 3 ok\n", .init(stdoutContains: "3 ok")) == .passed)
        #expect(judge(0, out: "all 2 ok\n", .init(stdoutContains: "3 ok")) == .failed)
    }

    @Test func tallyCountsByStatus() {
        var t = BatchTally()
        for s in [BatchStatus.passed, .passed, .oom, .error] { t.add(s) }
        #expect(t.done == 4 && t[.passed] == 2 && t[.oom] == 1 && t[.failed] == 0)
        #expect(t.json["passed"] == .int(2) && t.json["done"] == .int(4))
    }
}
