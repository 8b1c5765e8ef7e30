/// A TCP socket in LISTEN state inside a sandbox's network namespace.
public struct ListeningPort: Sendable, Hashable {
    public var port: Int
    /// The bound address as text (`127.0.0.1`, `0.0.0.0`, `::1`, `::`).
    public var address: String
    /// `tcp` or `tcp6`.
    public var family: String

    public init(port: Int, address: String, family: String) {
        self.port = port
        self.address = address
        self.family = family
    }

    public var json: JSONValue {
        .object(["port": .int(Int64(port)), "address": .string(address), "family": .string(family)])
    }

    /// Parses `/proc/<pid>/net/tcp` or `tcp6` text: the rows in state 0A (LISTEN).
    /// Rows look like `0: 0100007F:1F90 00000000:0000 0A ...`; addresses are
    /// hex in host byte order per 32-bit word (little-endian here).
    public static func parse(_ text: String, family: String) -> [ListeningPort] {
        var out: [ListeningPort] = []
        for line in text.split(separator: "\n").dropFirst() {
            let cols = line.split(separator: " ", omittingEmptySubsequences: true)
            guard cols.count > 3, cols[3] == "0A" else { continue }
            let local = cols[1].split(separator: ":")
            guard local.count == 2, let port = Int(local[1], radix: 16) else { continue }
            out.append(ListeningPort(port: port, address: address(String(local[0])) ?? String(local[0]), family: family))
        }
        return out
    }

    static func address(_ hex: String) -> String? {
        let u = Array(hex.utf8)
        guard u.count == 8 || u.count == 32 else { return nil }
        var words: [UInt32] = []
        for i in stride(from: 0, to: u.count, by: 8) {
            guard let w = UInt32(String(decoding: u[i..<(i + 8)], as: UTF8.self), radix: 16) else { return nil }
            words.append(w.byteSwapped)   // the kernel prints each word in host (little-endian) order
        }
        if words.count == 1 {
            let a = words[0]
            return "\(a >> 24).\((a >> 16) & 0xff).\((a >> 8) & 0xff).\(a & 0xff)"
        }
        let groups = words.flatMap { [UInt16($0 >> 16), UInt16($0 & 0xffff)] }
        if groups.allSatisfy({ $0 == 0 }) { return "::" }
        if groups[0..<7].allSatisfy({ $0 == 0 }) && groups[7] == 1 { return "::1" }
        if groups[0..<5].allSatisfy({ $0 == 0 }) && groups[5] == 0xffff {
            return "::ffff:\(groups[6] >> 8).\(groups[6] & 0xff).\(groups[7] >> 8).\(groups[7] & 0xff)"
        }
        return groups.map { String($0, radix: 16) }.joined(separator: ":")
    }
}
