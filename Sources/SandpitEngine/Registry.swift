import Foundation
import SandpitCore
import SandpitOS
import Synchronization

/// Pulls an image's manifest, config and layers from an OCI distribution (v2)
/// registry: the `WWW-Authenticate` challenge answered (a bearer token from
/// its realm, anonymous or with the registry's credentials; or basic auth), a
/// multi-arch index resolved to this host's platform, every manifest and blob
/// checked against its digest before use, layer downloads resumed from their
/// `.partial` file after an interruption. Plain HTTP only for registries the
/// daemon was told are insecure (`--insecure-registry HOST:PORT`).
///
/// Layers are fetched only when the build needs them (a layer already in the
/// store, from another image that shares it, is never downloaded), each to a
/// file under `<store>/images/partial/` that is removed once extracted.
final class RegistryClient: Sendable {
    let ref: ImageReference
    let scheme: String
    let partialDir: String
    let credentials: RegistryCredentials?
    let http: HTTP.Options
    /// The Authorization header that answered the registry's challenge.
    private let authorization = Mutex<String?>(nil)

    static let manifestTypes = [
        "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json",
    ]

    init(ref: ImageReference, access: RegistryAccess, partialDir: String) {
        self.ref = ref
        self.scheme = access.insecure.contains(ref.registry) || access.insecure.contains(ref.apiHost) ? "http" : "https"
        self.partialDir = partialDir
        self.credentials = access.credentials(for: ref)
        self.http = HTTP.Options(caFile: access.caFiles[ref.registry] ?? access.caFiles[ref.apiHost])
    }

    var base: String { "\(scheme)://\(ref.apiHost)/v2/\(ref.repository)" }

    /// The image's manifest for this host (through its index when it has
    /// one), the manifest's digest, and its config.
    func resolve() async throws -> (manifest: JSONValue, digest: String, config: JSONValue?) {
        var (doc, digest) = try await manifest(ref.reference, pinned: ref.digest)
        if let entries = doc["manifests"]?.arrayValue {
            let os = "linux", arch = ImagePlatform.architecture
            guard let pick = entries.first(where: { $0["platform"]?["os"]?.stringValue == os && $0["platform"]?["architecture"]?.stringValue == arch }),
                  let d = pick["digest"]?.stringValue else {
                let have = entries.compactMap { e in e["platform"].map { "\($0["os"]?.stringValue ?? "?")/\($0["architecture"]?.stringValue ?? "?")" } }
                throw SandpitError(.notFound, "\(ref) has no image for \(os)/\(arch) (it has: \(have.joined(separator: ", ")))",
                                   details: ["image": .string(ref.description)])
            }
            (doc, digest) = try await manifest(d, pinned: d)
        }
        guard doc["layers"]?.arrayValue != nil else {
            throw SandpitError(.invalidParams, "\(ref): the registry's manifest has no layers (media type \(doc["mediaType"]?.stringValue ?? "unknown"))",
                               details: ["image": .string(ref.description)])
        }
        var config: JSONValue?
        if let c = doc["config"]?["digest"]?.stringValue {
            let bytes = try await get("\(base)/blobs/\(c)").body
            try Self.check(bytes, is: c, what: "config of \(ref)")
            config = try JSONCodec.parse(String(decoding: bytes, as: UTF8.self))
        }
        return (doc, digest, config)
    }

    private func manifest(_ reference: String, pinned: String?) async throws -> (JSONValue, String) {
        let r = try await get("\(base)/manifests/\(reference)", accept: Self.manifestTypes)
        let digest = "sha256:" + Self.sha256(r.body)
        if let pinned { try Self.check(r.body, is: pinned, what: "manifest of \(ref)") }
        else if let said = r.headers["docker-content-digest"], said.hasPrefix("sha256:"), said != digest {
            throw SandpitError(.digestMismatch, "the manifest of \(ref) hashes to \(digest), not the \(said) the registry named",
                               details: ["image": .string(ref.description)])
        }
        guard let doc = try? JSONCodec.parse(String(decoding: r.body, as: UTF8.self)) else {
            throw SandpitError(.invalidParams, "the manifest of \(ref) is not JSON", details: ["image": .string(ref.description)])
        }
        return (doc, digest)
    }

    /// A verified local copy of a layer blob (the caller removes it). A
    /// partial download left by an interrupted pull is resumed.
    func layer(_ digest: String, progress: @escaping @Sendable (Int64) -> Void) async throws -> String {
        guard digest.hasPrefix("sha256:"), digest.count == 71, digest.dropFirst(7).allSatisfy({ $0.isHexDigit }) else {
            throw SandpitError(.invalidParams, "bad layer digest \(digest) in \(ref)'s manifest", details: ["image": .string(ref.description)])
        }
        try FS.mkdirs(partialDir, mode: 0o700)
        let path = partialDir + "/" + digest.dropFirst(7) + ".partial"
        var st = stat()
        let have = stat(path, &st) == 0 ? Int64(st.st_size) : 0
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SandpitError(.internal, "open \(path): \(String(cString: strerror(errno)))") }
        let file = OffsetFile(fd: fd)
        defer { file.close() }
        let url = "\(base)/blobs/\(digest)"
        let auth = self.authorization.withLock { $0 }
        let sink = BlobSink(file: file, offset: have, progress: progress)
        let options = http
        let r = try await offThread { () throws(HTTPError) -> HTTPResponse in
            try HTTP.get(url, headers: auth.map { [$0] } ?? [], from: have, options: options) { status, bytes in sink.write(status, bytes) }
        }
        // 416: the partial file already holds the whole blob.
        guard (200..<300).contains(r.status) || (r.status == 416 && have > 0) else {
            try? FS.remove(path)
            throw Self.failure(r, what: "layer \(digest) of \(ref)")
        }
        if sink.failed { throw SandpitError(.unavailable, "writing \(path) failed (is the store full?)") }
        let got = "sha256:" + (try LayerFS.fileDigest(path))
        guard got == digest else {
            try? FS.remove(path)
            throw SandpitError(.digestMismatch, "layer \(digest) of \(ref) hashes to \(got): the download is discarded",
                               details: ["image": .string(ref.description), "digest": .string(digest)])
        }
        return path
    }

    /// A GET that answers the registry's challenge once: a bearer token from
    /// its realm, or basic auth with the registry's credentials.
    private func get(_ url: String, accept: [String] = []) async throws -> HTTPResponse {
        let headers = accept.isEmpty ? [] : ["Accept: " + accept.joined(separator: ", ")]
        let options = http
        func send() async throws -> HTTPResponse {
            let h = headers + (authorization.withLock { $0 }.map { [$0] } ?? [])
            return try await offThread { () throws(HTTPError) -> HTTPResponse in try HTTP.get(url, headers: h, options: options) }
        }
        var r = try await send()
        if r.status == 401, let challenge = r.headers["www-authenticate"] {
            let scheme = challenge.prefix { $0 != " " }.lowercased()
            if scheme == "bearer" {
                let t = try await fetchToken(challenge)
                authorization.withLock { $0 = "Authorization: Bearer " + t }
            } else if scheme == "basic", let c = credentials {
                authorization.withLock { $0 = "Authorization: Basic " + c.basic }
            } else {
                throw SandpitError(.permissionDenied, "\(ref.registry) asks for credentials (\(scheme)) and the daemon has none for it: "
                                   + "add them to the daemon user's ~/.docker/config.json or pass sandpit serve --registry-auth \(ref.registry)=USER:PASSWORD",
                                   details: ["image": .string(ref.description)])
            }
            r = try await send()
        }
        guard (200..<300).contains(r.status) else { throw Self.failure(r, what: url.hasSuffix(ref.reference) ? "\(ref)" : url) }
        return r
    }

    private func fetchToken(_ challenge: String) async throws -> String {
        let params = RegistryChallenge.parameters(challenge)
        guard let realm = params["realm"], realm.hasPrefix("https://") || realm.hasPrefix("http://") else {
            throw SandpitError(.permissionDenied, "\(ref.registry) asks for credentials Sandpit cannot get (\(challenge))",
                               details: ["image": .string(ref.description)])
        }
        var q: [String] = []
        if let s = params["service"] { q.append("service=" + Self.urlEncode(s)) }
        q.append("scope=" + Self.urlEncode(params["scope"] ?? "repository:\(ref.repository):pull"))
        let url = realm + (realm.contains("?") ? "&" : "?") + q.joined(separator: "&")
        // The token service is another host: it gets the credentials, if any, as basic auth.
        let h = credentials.map { ["Authorization: Basic " + $0.basic] } ?? []
        let options = http
        let r = try await offThread { () throws(HTTPError) -> HTTPResponse in try HTTP.get(url, headers: h, options: options) }
        guard (200..<300).contains(r.status), let doc = try? JSONCodec.parse(String(decoding: r.body, as: UTF8.self)),
              let t = doc["token"]?.stringValue ?? doc["access_token"]?.stringValue, !t.isEmpty else {
            throw SandpitError(.permissionDenied, "\(ref.registry) gave no \(credentials == nil ? "anonymous " : "")token for \(ref.repository) (HTTP \(r.status)): "
                               + (credentials == nil ? "the repository is private (give the daemon credentials for it) or does not exist"
                                                     : "the credentials were refused, or the repository does not exist"),
                               details: ["image": .string(ref.description)])
        }
        return t
    }

    static func urlEncode(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? s
    }

    static func failure(_ r: HTTPResponse, what: String) -> SandpitError {
        let body = String(decoding: r.body.prefix(300), as: UTF8.self)
        switch r.status {
        case 401, 403: return SandpitError(.permissionDenied, "\(what): the registry refused access (HTTP \(r.status)); the repository is private or needs credentials",
                                           details: ["status": .int(Int64(r.status))])
        case 404: return SandpitError(.notFound, "\(what): not found in the registry (HTTP 404)", details: ["status": 404])
        default: return SandpitError(.unavailable, "\(what): the registry answered HTTP \(r.status): \(body)", details: ["status": .int(Int64(r.status))])
        }
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        var h = SHA256()
        h.update(bytes)
        return h.finalize().hexString
    }

    static func check(_ bytes: [UInt8], is digest: String, what: String) throws {
        let got = "sha256:" + sha256(bytes)
        guard got == digest else {
            throw SandpitError(.digestMismatch, "\(what) hashes to \(got), not \(digest)", details: ["digest": .string(digest)])
        }
    }
}

/// Appends a blob's bytes to its partial file as they arrive.
private final class BlobSink: @unchecked Sendable {
    let file: OffsetFile
    var offset: Int64
    let progress: @Sendable (Int64) -> Void
    var failed = false
    var restarted = false

    init(file: OffsetFile, offset: Int64, progress: @escaping @Sendable (Int64) -> Void) {
        self.file = file
        self.offset = offset
        self.progress = progress
    }

    func write(_ status: Int, _ bytes: UnsafeRawBufferPointer) -> Bool {
        // Asked for the rest but given all of it: start the file over.
        if status == 200, offset > 0, !restarted { offset = 0; _ = ftruncate(file.fd, 0) }
        restarted = true
        guard file.write(bytes, at: offset) else { failed = true; return false }
        offset += Int64(bytes.count)
        progress(offset)
        return true
    }
}

/// Runs a blocking call (a transfer) on a thread of its own, off the
/// concurrency pool, which the daemon's requests share.
func offThread<T: Sendable>(_ body: @escaping @Sendable () throws(HTTPError) -> T) async throws -> T {
    do {
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            OSThread.detach { c.resume(with: Result { try body() }) }
        }
    } catch let e as HTTPError {
        throw SandpitError(.unavailable, e.tls ? "TLS: \(e.message) (an untrusted or mismatched certificate)" : e.message,
                           details: e.tls ? ["tls": true] : [:])
    }
}

/// What the daemon may use to reach registries: the ones it may reach over
/// plain HTTP, CA files per registry (for a private CA), and credentials.
public struct RegistryAccess: Sendable {
    public var insecure: Set<String> = []
    /// Registry (`HOST[:PORT]`) → a PEM file of CAs to trust for it instead of the system's.
    public var caFiles: [String: String] = [:]
    /// Registry → credentials (`--registry-auth`), before those of the config file.
    public var auth: [String: RegistryCredentials] = [:]
    /// A Docker client config (`auths`), read when a pull needs it.
    public var dockerConfig: String?

    public init() {}

    func credentials(for ref: ImageReference) -> RegistryCredentials? {
        let keys = ref.registry == ImageReference.dockerHub
            ? [ref.registry, "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"]
            : [ref.registry, "https://" + ref.registry, "http://" + ref.registry]
        for k in keys { if let c = auth[k] { return c } }
        guard let path = dockerConfig, let bytes = try? FS.readFile(path, limit: 4 << 20),
              let auths = (try? JSONCodec.parse(String(decoding: bytes, as: UTF8.self)))?["auths"] else { return nil }
        for k in keys {
            guard let e = auths[k] else { continue }
            if let a = e["auth"]?.stringValue, let raw = Base64.decode(a), let text = String(validating: raw, as: UTF8.self),
               let colon = text.firstIndex(of: ":") {
                return RegistryCredentials(user: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
            }
            if let u = e["username"]?.stringValue, let p = e["password"]?.stringValue { return RegistryCredentials(user: u, password: p) }
        }
        return nil
    }
}

public struct RegistryCredentials: Sendable {
    public var user: String
    public var password: String
    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }
    /// `HOST=USER:PASSWORD` (`--registry-auth`).
    public static func parse(_ text: String) -> (registry: String, credentials: RegistryCredentials)? {
        guard let eq = text.firstIndex(of: "="), let colon = text[text.index(after: eq)...].firstIndex(of: ":") else { return nil }
        let host = String(text[..<eq]), user = String(text[text.index(after: eq)..<colon]), pass = String(text[text.index(after: colon)...])
        guard !host.isEmpty, !user.isEmpty else { return nil }
        return (host, RegistryCredentials(user: user, password: pass))
    }
    var basic: String { Base64.encode(Array((user + ":" + password).utf8)) }
}

/// Says when a count has moved on by `every` since it last said so.
final class ProgressGate: Sendable {
    private let last = Mutex<Int64>(0)
    let every: Int64
    init(every: Int64) { self.every = every }
    func due(_ value: Int64) -> Bool {
        last.withLock { l in
            guard value - l >= every else { return false }
            l = value
            return true
        }
    }
}
