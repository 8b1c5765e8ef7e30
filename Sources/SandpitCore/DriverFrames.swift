/// Splits one output stream of an interpreter context's driver into the
/// user's bytes and the driver's frames. A frame is
///
///     RS "sandpit:" NONCE ":" BODY RS        (RS = 0x1E)
///
/// written by the driver in one write of at most PIPE_BUF bytes, so output
/// of other threads or processes can fall between frames but never inside
/// one. Everything else on the stream is the user's, passed on in order as
/// soon as it cannot be the start of a frame.
///
/// Only the driver knows the nonce, but code in the sandbox can read it (it is
/// in the driver's argv); a forged frame can only mislead that sandbox's own
/// results. Bytes that start like a frame and do not end within
/// `maxFrameBytes` are the user's after all.
public struct DriverFrames: Sendable {
    public enum Piece: Equatable, Sendable {
        case output([UInt8])
        case frame([UInt8])
    }

    public static let maxFrameBytes = 8192
    private let head: [UInt8]
    private var buffer: [UInt8] = []

    public init(nonce: String) {
        head = [0x1E] + Array("sandpit:\(nonce):".utf8)
    }

    /// The frame that carries `body`, as a driver writes it.
    public func frame(_ body: String) -> [UInt8] { head + Array(body.utf8) + [0x1E] }

    /// Bytes held back because they may be the start of a frame.
    public var pending: Int { buffer.count }

    /// Drops bytes held back (a restore replaced the process that wrote them).
    public mutating func reset() { buffer = [] }

    public mutating func feed(_ bytes: [UInt8]) -> [Piece] {
        // Most chunks are plain output: nothing held back and no RS in them.
        if buffer.isEmpty, !bytes.contains(0x1E) { return bytes.isEmpty ? [] : [.output(bytes)] }
        buffer += bytes
        var out: [Piece] = []
        var start = 0          // first byte not yet passed on
        var scan = 0           // where to look for the next RS
        while let rs = buffer[scan...].firstIndex(of: 0x1E) {
            guard matchesHead(at: rs) else { scan = rs + 1; continue }
            guard buffer.count - rs >= head.count else { break }   // a frame's start, cut short: wait
            if let end = buffer[(rs + head.count)...].firstIndex(of: 0x1E) {
                if rs > start { out.append(.output(Array(buffer[start..<rs]))) }
                out.append(.frame(Array(buffer[(rs + head.count)..<end])))
                start = end + 1
                scan = start
            } else if buffer.count - rs > Self.maxFrameBytes {
                scan = rs + 1   // too long to be a frame: the user's
            } else {
                break           // a frame whose end has not arrived
            }
        }
        // Hold back from the first RS that may still begin a frame.
        var hold = buffer.count
        var i = scan
        while let rs = buffer[i...].firstIndex(of: 0x1E) {
            if matchesHead(at: rs) { hold = rs; break }
            i = rs + 1
        }
        if hold > start { out.append(.output(Array(buffer[start..<hold]))) }
        buffer.removeSubrange(..<hold)
        return out
    }

    /// True when the bytes from `at` on agree with the frame head as far as they go.
    private func matchesHead(at: Int) -> Bool {
        let n = min(head.count, buffer.count - at)
        for k in 0..<n where buffer[at + k] != head[k] { return false }
        return true
    }
}
