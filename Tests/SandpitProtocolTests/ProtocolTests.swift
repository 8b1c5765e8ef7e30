import Testing
import SandpitCore
@testable import SandpitProtocol

@Suite struct LineFramerTests {
    @Test func splitsAcrossPushes() {
        var f = LineFramer(maxLineBytes: 100)
        #expect(f.push(Array("{\"a\"".utf8)) == [])
        #expect(f.push(Array(":1}\n{\"b\":2}\r\n\n  \n".utf8)) == [.line(Array("{\"a\":1}".utf8)), .line(Array("{\"b\":2}".utf8))])
    }

    @Test func reportsOversizedLinesOnceAndRecovers() {
        var f = LineFramer(maxLineBytes: 8)
        var items = f.push(Array(repeating: UInt8(ascii: "x"), count: 20))
        items += f.push(Array(repeating: UInt8(ascii: "y"), count: 20))
        items += f.push(Array("z\n{}\n".utf8))
        #expect(items.count == 2)
        if case .oversized = items[0] {} else { Issue.record("expected oversized, got \(items[0])") }
        #expect(items[1] == .line(Array("{}".utf8)))
        #expect(f.bufferedBytes == 0)
    }

    @Test func oversizedCompleteLineInOnePush() {
        var f = LineFramer(maxLineBytes: 4)
        let items = f.push(Array("123456\nab\n".utf8))
        #expect(items == [.oversized(6, head: Array("123456".utf8)), .line(Array("ab".utf8))])
    }

    @Test func anOversizedLineKeepsItsFirstBytesAcrossPushes() {
        var f = LineFramer(maxLineBytes: 8)
        var items = f.push(Array("{\"id\"".utf8))
        items += f.push(Array(":7,\"pad\":\"xxxxxxxx".utf8))
        items += f.push(Array("xx\"}\n".utf8))
        #expect(items == [.oversized(23, head: Array("{\"id\":7,\"pad\":\"xxxxxxxx".utf8))])
    }
}

@Suite struct TruncatedRequestIdTests {
    func id(_ s: String) -> JSONValue { RPC.idOfTruncatedRequest(Array(s.utf8)) }

    @Test func findsTheTopLevelIdBeforeTheCut() {
        #expect(id(#"{"jsonrpc":"2.0","id":42,"method":"fs.write","params":{"data":"AAAA"#) == .int(42))
        #expect(id(#"{ "jsonrpc" : "2.0" , "id" : "a\"b" , "params":{"#) == .string("a\"b"))
        #expect(id(#"{"id":123456789012345678901234567890,"params":"#) == .bigInteger("123456789012345678901234567890"))
        #expect(id(#"{"method":"x","params":{"id":5,"nested":[{"id":6}]},"id":9,"#) == .int(9))
    }

    @Test func anIdCutOffOrAbsentOrOfTheWrongKindIsNull() {
        #expect(id(#"{"jsonrpc":"2.0","method":"fs.write","params":{"id":5,"data":"AAAA"#) == .null)
        #expect(id(#"{"jsonrpc":"2.0","id":12"#) == .null)      // the number may go on
        #expect(id(#"{"jsonrpc":"2.0","id":"ab"#) == .null)
        #expect(id(#"{"id":{"x":1},"method":"#) == .null)
        #expect(id(#"{"id":null,"#) == .null)
        #expect(id(#"["id",1]"#) == .null)
        #expect(id("") == .null)
    }
}

@Suite struct RPCParseTests {
    func reject(_ s: String) -> SandpitError? {
        if case .failure(let r) = RPC.parse(Array(s.utf8)) { return r.error }
        return nil
    }

    @Test func classifiesBadRequests() {
        #expect(reject("{nope")?.code == .parseError)
        #expect(reject("[1,2]")?.code == .invalidRequest)
        #expect(reject("3")?.code == .invalidRequest)
        #expect(reject(#"{"jsonrpc":"1.0","id":1,"method":"x"}"#)?.code == .invalidRequest)
        #expect(reject(#"{"jsonrpc":"2.0","id":{},"method":"x"}"#)?.code == .invalidRequest)
        #expect(reject(#"{"jsonrpc":"2.0","id":1}"#)?.code == .invalidRequest)
        #expect(reject(#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#)?.code == .invalidParams)
    }

    @Test func echoesIntegerIdsOfAnySizeExactly() {
        for id in ["18446744073709551616", "-99999999999999999999999", "9223372036854775807", "7"] {
            guard case .success(let req) = RPC.parse(Array("{\"jsonrpc\":\"2.0\",\"id\":\(id),\"method\":\"server.info\"}".utf8)) else {
                Issue.record("id \(id) was refused")
                continue
            }
            let reply = RPC.response(id: req.id ?? .null, result: .object([:]))
            #expect(reply.contains("\"id\":\(id),") || reply.contains("\"id\":\(id)}"), "\(reply)")
        }
    }

    @Test func keepsTheIdForErrorsAfterItWasRead() {
        if case .failure(let r) = RPC.parse(Array(#"{"jsonrpc":"2.0","id":"q7","method":5}"#.utf8)) {
            #expect(r.id == .string("q7"))
        } else {
            Issue.record("expected rejection")
        }
    }

    @Test func acceptsNotificationsAndNamedParams() throws {
        guard case .success(let r) = RPC.parse(Array(#"{"jsonrpc":"2.0","method":"m","params":{"a":"b"}}"#.utf8)) else {
            Issue.record("expected success"); return
        }
        #expect(r.id == nil)
        #expect(try r.params.requireString("a") == "b")
    }

    @Test func paramsNameTheFieldInErrors() {
        let p = Params(["n": "x", "arr": ["a", 1], "extra": true])
        #expect(throws: SandpitError.self) { try p.int("n") }
        do { _ = try p.stringArray("arr") } catch { #expect(error.details["field"] == "arr[1]") }
        do { try p.expect(only: ["n", "arr"]) } catch { #expect(error.details["field"] == "extra") }
        do { _ = try p.requireString("missing") } catch { #expect(error.message.contains("missing")) }
    }

    @Test func encodesErrorsWithStableStringCodes() throws {
        let line = RPC.error(id: 7, SandpitError.notFound("Sandbox", "sb_x"))
        let v = try JSONCodec.parse(line)
        #expect(v["error"]?["code"] == .int(-32004))
        #expect(v["error"]?["data"]?["code"] == "not_found")
        #expect(v["id"] == 7)
    }
}
