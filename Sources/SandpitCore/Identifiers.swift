/// Resource ids: a type prefix and 12 base-62 characters (~71 bits), so they
/// are unguessable, sort-free and safe in paths.
public enum Identifier {
    static let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    /// Random characters in an id: 22 base-62 characters carry 130 bits, so
    /// ids cannot be guessed or collide (the first versions used 12, ~71 bits:
    /// those are still accepted, as catalogs keep them).
    public static let length = 22
    static let legacyLength = 12

    public static func make<R: RandomNumberGenerator>(_ prefix: String, length: Int = length, using rng: inout R) -> String {
        var s = prefix + "_"
        for _ in 0..<length { s.unicodeScalars.append(Unicode.Scalar(alphabet[Int(rng.next(upperBound: UInt64(alphabet.count)))])) }
        return s
    }

    public static func make(_ prefix: String, length: Int = length) -> String {
        var rng = SystemRandomNumberGenerator()
        return make(prefix, length: length, using: &rng)
    }

    /// A secret for bearer use (port tokens): `count` base-62 characters from the system RNG.
    public static func secret(_ count: Int = 32) -> String {
        var rng = SystemRandomNumberGenerator()
        return String(decoding: (0..<count).map { _ in alphabet[Int(rng.next(upperBound: UInt64(alphabet.count)))] }, as: UTF8.self)
    }

    /// Compares secrets without stopping at the first difference.
    public static func secretsEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) { diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0) }
        return diff == 0
    }

    /// True when `id` has the shape of an id with this prefix. Ids are used in
    /// paths and cgroup names, so anything else is rejected before lookup.
    public static func isValid(_ id: String, prefix: String) -> Bool {
        let u = Array(id.utf8)
        let p = Array((prefix + "_").utf8)
        guard u.count == p.count + length || u.count == p.count + legacyLength, u.starts(with: p) else { return false }
        return u[p.count...].allSatisfy { alphabet.contains($0) }
    }
}
