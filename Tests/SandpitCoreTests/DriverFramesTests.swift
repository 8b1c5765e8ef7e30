import Testing
@testable import SandpitCore

@Suite struct DriverFramesTests {
    let nonce = "n0nce"

    /// Feeds `bytes` in pieces of `step` and joins what comes out: the user's bytes, and each frame's body.
    func split(_ bytes: [UInt8], step: Int) -> (output: [UInt8], frames: [String], held: Int) {
        var f = DriverFrames(nonce: nonce)
        var output: [UInt8] = [], frames: [String] = []
        var i = 0
        while i < bytes.count {
            for p in f.feed(Array(bytes[i..<min(i + step, bytes.count)])) {
                switch p {
                case .output(let b): output += b
                case .frame(let b): frames.append(String(decoding: b, as: UTF8.self))
                }
            }
            i += step
        }
        return (output, frames, f.pending)
    }

    @Test func separatesFramesFromOutputHoweverTheBytesArrive() {
        let f = DriverFrames(nonce: nonce)
        let stream = Array("before ".utf8) + f.frame("=:{\"t\":\"r\"}") + Array("mid\u{1E}dle".utf8) + f.frame("1:0") + Array(" after".utf8)
        for step in 1...stream.count {
            let r = split(stream, step: step)
            #expect(String(decoding: r.output, as: UTF8.self) == "before mid\u{1E}dle after", "step \(step)")
            #expect(r.frames == ["=:{\"t\":\"r\"}", "1:0"], "step \(step)")
            #expect(r.held == 0, "step \(step)")
        }
    }

    @Test func holdsBackOnlyWhatCanStillBeAFrame() {
        var f = DriverFrames(nonce: nonce)
        // A prefix of the head is held; the byte that rules it out releases it.
        #expect(f.feed(Array("ab\u{1E}sandp".utf8)) == [.output(Array("ab".utf8))])
        #expect(f.pending == 6)
        #expect(f.feed(Array("ox".utf8)) == [.output(Array("\u{1E}sandpox".utf8))])
        // Another nonce is the user's; a last RS may begin a frame, until the next byte says otherwise.
        #expect(f.feed(Array("\u{1E}sandpit:other:1:0\u{1E}".utf8)) == [.output(Array("\u{1E}sandpit:other:1:0".utf8))])
        #expect(f.pending == 1)
        #expect(f.feed(Array("!".utf8)) == [.output(Array("\u{1E}!".utf8))])
        #expect(f.pending == 0)
    }

    @Test func aStartThatNeverEndsIsTheUsersAfterMaxFrameBytes() {
        var f = DriverFrames(nonce: nonce)
        let start = Array("\u{1E}sandpit:\(nonce):=:".utf8)
        #expect(f.feed(start) == [])
        let filler = [UInt8](repeating: 0x61, count: DriverFrames.maxFrameBytes)
        let out = f.feed(filler)
        #expect(out == [.output(start + filler)])
        #expect(f.pending == 0)
    }

    @Test func resetDropsWhatWasHeld() {
        var f = DriverFrames(nonce: nonce)
        _ = f.feed(Array("\u{1E}sandpit:\(nonce):[:{\"t\"".utf8))
        #expect(f.pending > 0)
        f.reset()
        #expect(f.feed(f.frame("=:{}")) == [.frame(Array("=:{}".utf8))])
    }
}
