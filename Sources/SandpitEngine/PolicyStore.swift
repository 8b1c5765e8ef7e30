import SandpitCore
import SandpitOS

/// Named policies: the built-in `default`, overridden or extended by
/// `*.json` files in the policies directory.
public struct PolicyStore: Sendable {
    public private(set) var policies: [String: Policy] = ["default": .builtinDefault]
    public let directory: String?

    public init(directory: String?) throws {
        self.directory = directory
        guard let dir = directory else { return }
        for f in FS.listDirectory(dir).sorted() where f.hasSuffix(".json") {
            let path = dir + "/" + f
            let v: JSONValue
            do { v = try JSONCodec.parse(try FS.readFile(path)) } catch {
                throw SandpitError(.invalidParams, "\(path): \(error)")
            }
            let p = try Policy.decode(v, source: path)
            let expected = String(f.dropLast(5))
            guard p.name == expected else {
                throw SandpitError(.invalidParams, "\(path): name \"\(p.name)\" does not match the file name \"\(expected)\"")
            }
            policies[p.name] = p
        }
    }

    public func policy(_ name: String) throws(SandpitError) -> Policy {
        guard let p = policies[name] else {
            throw SandpitError(.notFound, "policy \(name) does not exist (known: \(policies.keys.sorted().joined(separator: ", ")))",
                               details: ["policy": .string(name)])
        }
        return p
    }
}
