/// A container image reference, `[registry/]name[:tag][@sha256:digest]`,
/// read as Docker reads one: without a registry (no `.` or `:` in the first
/// component, and not `localhost`) the image is on Docker Hub, whose API host
/// is `registry-1.docker.io` and whose one-component names are `library/…`;
/// without a tag or digest it is `latest`.
public struct ImageReference: Sendable, Equatable, CustomStringConvertible {
    /// The registry as written (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    public var registry: String
    /// The repository path (`library/python`).
    public var repository: String
    public var tag: String?
    /// `sha256:<64 hex>` when pinned; then the manifest must hash to it.
    public var digest: String?

    public static let dockerHub = "docker.io"

    /// The host the registry's HTTP API answers on.
    public var apiHost: String { registry == Self.dockerHub ? "registry-1.docker.io" : registry }

    /// What to ask the manifests endpoint for: the digest when pinned, else the tag.
    public var reference: String { digest ?? tag ?? "latest" }

    /// `docker.io/library/python:3.12-slim`, `127.0.0.1:5000/mini@sha256:…`.
    public var description: String {
        registry + "/" + repository + (tag.map { ":" + $0 } ?? "") + (digest.map { "@" + $0 } ?? "")
    }

    /// A template name and tag for this image: its last path component and its tag.
    public var templateName: (name: String, tag: String) {
        let last = String(repository.split(separator: "/").last ?? Substring(repository))
        return (last, tag ?? (digest.map { String($0.dropFirst(7).prefix(12)) } ?? "latest"))
    }

    public static func parse(_ text: String) throws(SandpitError) -> ImageReference {
        func bad(_ why: String) -> SandpitError {
            SandpitError(.invalidParams, "image reference \"\(text)\": \(why)", details: ["field": "image"])
        }
        guard !text.isEmpty, text.count <= 512, !text.contains(where: { $0.isWhitespace }) else { throw bad("empty, too long or has spaces") }
        var rest = Substring(text)
        var digest: String?
        if let at = rest.firstIndex(of: "@") {
            let d = String(rest[rest.index(after: at)...])
            guard d.hasPrefix("sha256:"), d.count == 71, d.dropFirst(7).allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
                throw bad("a digest is sha256: and 64 lower-case hex digits")
            }
            digest = d
            rest = rest[..<at]
        }
        var registry = dockerHub
        if let slash = rest.firstIndex(of: "/") {
            let first = rest[..<slash]
            if first.contains(".") || first.contains(":") || first == "localhost" {
                registry = String(first)
                rest = rest[rest.index(after: slash)...]
            }
        }
        var tag: String?
        if let colon = rest.lastIndex(of: ":") {
            let t = String(rest[rest.index(after: colon)...])
            guard !t.isEmpty, t.count <= 128, t.first != "." && t.first != "-",
                  t.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else { throw bad("bad tag \"\(t)\"") }
            tag = t
            rest = rest[..<colon]
        }
        var repository = String(rest)
        let components = repository.split(separator: "/", omittingEmptySubsequences: false)
        guard !components.isEmpty, components.allSatisfy({ c in
            guard let f = c.first, f.isLowercase || f.isNumber else { return false }
            return c.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || "._-".contains($0)) }
        }) else { throw bad("a repository is lower-case letters, digits and . _ - in /-separated parts") }
        if registry == dockerHub && components.count == 1 { repository = "library/" + repository }
        if tag == nil && digest == nil { tag = "latest" }
        return ImageReference(registry: registry, repository: repository, tag: tag, digest: digest)
    }

    /// Whether a `FROM` argument names a registry image even if a template of
    /// that name exists: it names a registry host or pins a digest.
    public static func isExplicit(_ text: String) -> Bool {
        if text.contains("@") { return true }
        guard let slash = text.firstIndex(of: "/") else { return false }
        let first = text[..<slash]
        return first.contains(".") || first.contains(":") || first == "localhost"
    }
}

/// The platform an image index entry is picked for: this host's.
public enum ImagePlatform {
    public static var architecture: String {
        #if arch(x86_64)
        "amd64"
        #elseif arch(arm64)
        "arm64"
        #else
        "unknown"
        #endif
    }
}

/// A registry's `WWW-Authenticate` challenge.
public enum RegistryChallenge {
    /// `Bearer realm="…",service="…",scope="…"` → its parameters.
    public static func parameters(_ header: String) -> [String: String] {
        var out: [String: String] = [:]
        var rest = Substring(header.drop { $0 != " " }.dropFirst())
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " || $0 == "," }
            guard let eq = rest.firstIndex(of: "=") else { break }
            let key = rest[..<eq].lowercased()
            rest = rest[rest.index(after: eq)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                let end = rest.firstIndex(of: "\"") ?? rest.endIndex
                value = String(rest[..<end])
                rest = end < rest.endIndex ? rest[rest.index(after: end)...] : ""
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = String(rest[..<end])
                rest = rest[end...]
            }
            out[key] = value
        }
        return out
    }

}
