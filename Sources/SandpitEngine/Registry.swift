import Foundation
import SandpitCore
import SandpitOS
import Synchronization

/// Pulls an image's manifest, config and layers from an OCI distribution (v2)
/// registry: anonymous bearer tokens (the `WWW-Authenticate` challenge), a
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
    private let token = Mutex<String?>(nil)

    static let manifestTypes = [
        "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json",
    ]

    init(ref: ImageReference, insecure: Set<String>, partialDir: String) {
        self.ref = ref
        self.scheme = insecure.contains(ref.registry) || insecure.contains(ref.apiHost) ? "http" : "https"
        self.partialDir = partialDir
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
        defer { close(fd) }
        let url = "\(base)/blobs/\(digest)"
        let token = self.token.withLock { $0 }
        let sink = BlobSink(fd: fd, offset: have, progress: progress)
        let r = try await offThread { () throws(HTTPError) -> HTTPResponse in
            try HTTP.get(url, headers: token.map { ["Authorization: Bearer " + $0] } ?? [], from: have) { status, bytes in sink.write(status, bytes) }
        }
        // 416: the partial file already holds the whole blob.
        guard (200..<300).contains(r.status) || (r.status == 416 && have > 0) else {
            try? FS.remove(path)
            throw Self.failure(r, what: "layer \(digest) of \(ref)")
        }
        if sink.failed { throw SandpitError(.unavailable, "writing \(path): \(String(cString: strerror(sink.errno)))") }
        let got = "sha256:" + (try LayerFS.fileDigest(path))
        guard got == digest else {
            try? FS.remove(path)
            throw SandpitError(.digestMismatch, "layer \(digest) of \(ref) hashes to \(got): the download is discarded",
                               details: ["image": .string(ref.description), "digest": .string(digest)])
        }
        return path
    }

    /// A GET that answers a bearer challenge once with an anonymous token.
    private func get(_ url: String, accept: [String] = []) async throws -> HTTPResponse {
        var headers = accept.isEmpty ? [] : ["Accept: " + accept.joined(separator: ", ")]
        if let t = token.withLock({ $0 }) { headers.append("Authorization: Bearer " + t) }
        let h = headers
        var r = try await offThread { () throws(HTTPError) -> HTTPResponse in try HTTP.get(url, headers: h) }
        if r.status == 401, let challenge = r.headers["www-authenticate"], challenge.lowercased().hasPrefix("bearer ") {
            let t = try await fetchToken(challenge)
            token.withLock { $0 = t }
            let again = headers.filter { !$0.hasPrefix("Authorization:") } + ["Authorization: Bearer " + t]
            r = try await offThread { () throws(HTTPError) -> HTTPResponse in try HTTP.get(url, headers: again) }
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
        let r = try await offThread { () throws(HTTPError) -> HTTPResponse in try HTTP.get(url) }
        guard (200..<300).contains(r.status), let doc = try? JSONCodec.parse(String(decoding: r.body, as: UTF8.self)),
              let t = doc["token"]?.stringValue ?? doc["access_token"]?.stringValue, !t.isEmpty else {
            throw SandpitError(.permissionDenied, "\(ref.registry) gave no anonymous token for \(ref.repository) (HTTP \(r.status)): "
                               + "the repository is private or does not exist", details: ["image": .string(ref.description)])
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
        return h.finalize().map { String(format: "%02x", $0) }.joined()
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
    let fd: Int32
    var offset: Int64
    let progress: @Sendable (Int64) -> Void
    var failed = false
    var errno: Int32 = 0
    var restarted = false

    init(fd: Int32, offset: Int64, progress: @escaping @Sendable (Int64) -> Void) {
        self.fd = fd
        self.offset = offset
        self.progress = progress
    }

    func write(_ status: Int, _ bytes: UnsafeRawBufferPointer) -> Bool {
        // Asked for the rest but given all of it: start the file over.
        if status == 200, offset > 0, !restarted { offset = 0; _ = ftruncate(fd, 0) }
        restarted = true
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 && Glibc.errno == EINTR { continue }
            if n <= 0 { failed = true; errno = Glibc.errno; return false }
            done += n
        }
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
            Thread { c.resume(with: Result { try body() }) }.start()
        }
    } catch let e as HTTPError {
        throw SandpitError(.unavailable, e.tls ? "TLS: \(e.message) (an untrusted or mismatched certificate)" : e.message,
                           details: e.tls ? ["tls": true] : [:])
    }
}
