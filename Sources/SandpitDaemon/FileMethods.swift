#if canImport(Glibc)
import CSandpit
import Glibc
#endif
import SandpitCore
import SandpitEngine
import SandpitOS
import SandpitProtocol
import Synchronization

/// `fs.*`: validation and result shapes; the engine resolves every path inside the sandbox.
extension RPCService {
    static let fileMethods: Set<String> = ["fs.read", "fs.write", "fs.writeMany", "fs.list", "fs.stat", "fs.mkdir", "fs.remove", "fs.rename",
                                           "fs.upload", "fs.uploadChunk", "fs.uploadCommit", "fs.uploadAbort", "fs.download",
                                           "fs.watch", "fs.unwatch"]

    /// A path param: `key` (a string) or `keyBase64` (raw bytes, for names that are not UTF-8).
    static func path(_ p: Params, _ key: String = "path", required: Bool = true) throws(SandpitError) -> [UInt8]? {
        var bytes: [UInt8]
        if let b = try p.string(key + "Base64") {
            guard try p.string(key) == nil else { throw SandpitError.invalidParams(key, "give \(key) or \(key)Base64, not both") }
            guard let d = Base64.decode(b) else { throw SandpitError.invalidParams(key + "Base64", "not valid base64") }
            bytes = d
        } else if let s = try p.string(key) {
            bytes = Array(s.utf8)
        } else {
            if required { throw SandpitError.invalidParams(key, "required") }
            return nil
        }
        guard !bytes.isEmpty else { throw SandpitError.invalidParams(key, "is empty") }
        guard !bytes.contains(0) else { throw SandpitError.invalidParams(key, "contains a NUL byte") }
        guard bytes.count <= 4096 else { throw SandpitError.invalidParams(key, "longer than PATH_MAX (4096 bytes)") }
        return bytes
    }

    /// A duplicate of descriptor `fd` of the client's own process: the one
    /// that connected (its pidfd, pinned at accept), never a pid it names.
    static func clientFd(_ p: Params, _ peer: Peer) throws(SandpitError) -> Int32 {
        guard let n = try p.int("fd", min: 0, max: Int64(Int32.max)) else { throw SandpitError.invalidParams("fd", "required") }
        guard peer.pidfd >= 0 else {
            throw SandpitError.invalidParams("fd", "descriptors are taken only from a client connected to the daemon's Unix socket on this host; send chunks instead")
        }
        let fd = sp_pidfd_getfd(peer.pidfd, Int32(n))
        guard fd >= 0 else {
            let e = errno
            throw SandpitError.invalidParams("fd", e == EBADF ? "\(n) is not an open descriptor of the connected process"
                                                  : "cannot take descriptor \(n) from the connected process: \(String(cString: strerror(e)))")
        }
        return fd
    }

    /// `data` (base64) or `text`.
    static func content(_ p: Params) throws(SandpitError) -> [UInt8] {
        switch (try p.string("data"), try p.string("text")) {
        case (let d?, nil):
            guard let b = Base64.decode(d) else { throw SandpitError.invalidParams("data", "not valid base64") }
            return b
        case (nil, let t?): return Array(t.utf8)
        case (nil, nil): throw SandpitError.invalidParams("data", "one of data (base64) or text is required")
        default: throw SandpitError.invalidParams("text", "give data or text, not both")
        }
    }

    static func mode(_ p: Params) throws(SandpitError) -> UInt32? {
        try p.int("mode", min: 0, max: 0o7777).map { UInt32($0) }
    }

    /// A path on the wire: UTF-8 as is; other bytes base64 with `pathEncoding`.
    static func put(_ bytes: [UInt8], _ key: String, into o: inout JSONObject) {
        if let s = String(validating: bytes, as: UTF8.self) {
            o[key] = .string(s)
        } else {
            o[key] = .string(Base64.encode(bytes))
            o[key + "Encoding"] = "base64"
        }
    }

    static func entryJSON(_ e: FileEntry) -> JSONValue {
        var o: JSONObject = [:]
        put(e.path, "path", into: &o)
        put(Array(e.path.split(separator: UInt8(ascii: "/")).last ?? []), "name", into: &o)
        o["type"] = .string(e.type)
        o["size"] = .int(e.size)
        o["mode"] = .int(Int64(e.mode))
        o["mtime"] = .string(Timestamp.iso8601(ms: e.mtimeMs))
        if let t = e.target { put(t, "target", into: &o) }
        return .object(o)
    }

    static func with(_ access: FileAccess, _ o: JSONObject) -> JSONValue {
        var r = o
        for (k, v) in access.json { r[k] = v }
        return .object(r)
    }

    func fileMethod(_ method: String, _ p: Params, requestId: JSONValue, peer: Peer, out: any RPCOutbound) async throws -> JSONValue {
        let caller = peer.caller
        switch method {
        case "fs.read":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "offset", "length"])
            let path = try Self.path(p)!
            let offset = try p.int("offset", min: 0) ?? 0
            let length = try p.int("length", min: 0, max: Int64(SandboxFiles.readLimit)).map { Int($0) }
            let (r, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: false) { root, resolve in
                try SandboxFiles.read(root, resolve(path), offset: offset, length: length)
            }
            return Self.with(access, ["data": .string(Base64.encode(r.data)), "size": .int(r.size), "eof": .bool(r.eof),
                                      "bytes": .int(Int64(r.data.count))])
        case "fs.write":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "data", "text", "mode", "append"])
            let path = try Self.path(p)!
            let data = try Self.content(p)
            let mode = try Self.mode(p), append = try p.bool("append") ?? false
            let (size, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: true) { root, resolve in
                try SandboxFiles.write(root, resolve(path), data, mode: mode, append: append)
            }
            return Self.with(access, ["size": .int(size)])
        case "fs.writeMany":
            try p.expect(only: ["sandboxId", "files"])
            guard let arr = p.object["files"]?.arrayValue, !arr.isEmpty else { throw SandpitError.invalidParams("files", "a non-empty array of {path, data|text, mode?}") }
            guard arr.count <= 10_000 else { throw SandpitError.invalidParams("files", "at most 10000 files per request") }
            var parsed: [([UInt8], [UInt8], UInt32?)] = []
            for (i, v) in arr.enumerated() {
                guard let o = v.objectValue else { throw SandpitError.invalidParams("files[\(i)]", "expected an object") }
                let f = Params(o)
                do {
                    try f.expect(only: ["path", "pathBase64", "data", "text", "mode"])
                    parsed.append((try Self.path(f)!, try Self.content(f), try Self.mode(f)))
                } catch {
                    throw SandpitError(.invalidParams, "files[\(i)]: \(error.message)", details: ["field": .string("files[\(i)]")])
                }
            }
            let files = parsed
            let (bytes, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: true) { root, resolve in
                try Self.writeAll(root, files.map { (resolve($0.0), $0.1, $0.2) })
            }
            return Self.with(access, ["written": .int(Int64(files.count)), "bytes": .int(bytes)])
        case "fs.list":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "recursive", "limit", "cursor"])
            let path = try Self.path(p, required: false) ?? Array("/".utf8)
            let recursive = try p.bool("recursive") ?? false
            let limit = Int(try p.int("limit", min: 1, max: 10_000) ?? 1000)
            var after: [UInt8]?
            if let c = try p.string("cursor") {
                guard let b = Base64.decode(c) else { throw SandpitError.invalidParams("cursor", "not a cursor returned by fs.list") }
                after = b
            }
            let ((entries, complete), access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: false) { root, resolve in
                try SandboxFiles.list(root, resolve(path), recursive: recursive, cap: 1_000_000)
            }
            var page = entries[...]
            if let a = after { page = page.drop { !a.lexicographicallyPrecedes($0.path) } }
            let slice = page.prefix(limit)
            var o: JSONObject = ["entries": .array(slice.map(Self.entryJSON))]
            if page.count > limit, let last = slice.last { o["nextCursor"] = .string(Base64.encode(last.path)) }
            if !complete { o["truncated"] = true }
            return Self.with(access, o)
        case "fs.stat":
            try p.expect(only: ["sandboxId", "path", "pathBase64"])
            let path = try Self.path(p)!
            let (e, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: false) { root, resolve in
                try SandboxFiles.stat(root, resolve(path))
            }
            guard case .object(let o) = Self.entryJSON(e) else { return .null }
            return Self.with(access, o)
        case "fs.mkdir":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "recursive", "mode"])
            let path = try Self.path(p)!
            let recursive = try p.bool("recursive") ?? false, mode = try Self.mode(p) ?? 0o755
            let (_, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: true) { root, resolve in
                try SandboxFiles.mkdir(root, resolve(path), recursive: recursive, mode: mode)
            }
            return Self.with(access, [:])
        case "fs.remove":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "recursive"])
            let path = try Self.path(p)!
            let recursive = try p.bool("recursive") ?? false
            let (_, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: true) { root, resolve in
                try SandboxFiles.remove(root, resolve(path), recursive: recursive)
            }
            return Self.with(access, [:])
        case "fs.rename":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "to", "toBase64"])
            let from = try Self.path(p)!, to = try Self.path(p, "to")!
            let (_, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: true) { root, resolve in
                try SandboxFiles.rename(root, resolve(from), resolve(to))
            }
            return Self.with(access, [:])
        case "fs.watch":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "recursive"])
            return try await watch(try p.requireString("sandboxId"), path: try Self.path(p)!, recursive: try p.bool("recursive") ?? false,
                                   requestId: requestId, peer: peer, out: out)
        case "fs.unwatch":
            try p.expect(only: ["watchId"])
            let watchId = try p.requireString("watchId")
            guard let sid = peer.fileWatches.withLock({ $0.removeValue(forKey: watchId) }) else { throw SandpitError.notFound("Watch", watchId) }
            let stopped = try engine.unwatchFiles(sid, watchId: watchId, caller: caller)
            return .object(["watchId": .string(watchId), "stopped": .bool(stopped)])
        case "fs.upload" where p.object["fd"] != nil:
            try p.expect(only: ["sandboxId", "path", "pathBase64", "mode", "fd"])
            let source = try Self.clientFd(p, peer)
            defer { close(source) }
            let (size, access) = try await engine.upload(from: source, to: try Self.path(p)!, in: try p.requireString("sandboxId"),
                                                         mode: try Self.mode(p), caller: caller)
            return Self.with(access, ["size": .int(size), "fd": true])
        case "fs.download" where p.object["fd"] != nil:
            try p.expect(only: ["sandboxId", "path", "pathBase64", "fd"])
            let target = try Self.clientFd(p, peer)
            defer { close(target) }
            let (size, access) = try await engine.download(try Self.path(p)!, in: try p.requireString("sandboxId"), to: target, caller: caller)
            return Self.with(access, ["size": .int(size), "fd": true])
        case "fs.upload":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "mode"])
            let (id, access) = try await engine.beginUpload(try p.requireString("sandboxId"), path: try Self.path(p)!, mode: try Self.mode(p), caller: caller)
            peer.uploads.withLock { _ = $0.insert(id) }
            return Self.with(access, ["uploadId": .string(id), "maxChunkBytes": .int(Int64(limits.maxLineBytes / 4 * 3 - 4096))])
        case "fs.uploadChunk":
            try p.expect(only: ["uploadId", "offset", "data"])
            guard let d = try p.string("data"), let data = Base64.decode(d) else { throw SandpitError.invalidParams("data", "required, base64") }
            let received = try await engine.uploadChunk(try p.requireString("uploadId"), offset: try p.int("offset", min: 0) ?? 0, data: data, caller: caller)
            return .object(["received": .int(received)])
        case "fs.uploadCommit":
            try p.expect(only: ["uploadId"])
            let id = try p.requireString("uploadId")
            let size = try await engine.commitUpload(id, caller: caller)
            peer.uploads.withLock { _ = $0.remove(id) }
            return .object(["size": .int(size)])
        case "fs.uploadAbort":
            try p.expect(only: ["uploadId"])
            let id = try p.requireString("uploadId")
            await engine.abortUpload(id, caller: caller)
            peer.uploads.withLock { _ = $0.remove(id) }
            return .object([:])
        case "fs.download":
            try p.expect(only: ["sandboxId", "path", "pathBase64", "offset", "chunkBytes"])
            let path = try Self.path(p)!
            let chunk = Int(try p.int("chunkBytes", min: 4096, max: 8 << 20) ?? 1 << 20)
            var offset = try p.int("offset", min: 0) ?? 0
            let (fd, access) = try await engine.withFiles(try p.requireString("sandboxId"), caller: caller, write: false) { root, resolve in
                try SandboxFiles.openRegular(root, resolve(path))
            }
            defer { close(fd) }
            var st = stat()
            _ = fstat(fd, &st)
            var buf = [UInt8](repeating: 0, count: chunk)
            var chunks: Int64 = 0
            while true {
                try Task.checkCancellation()
                let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, chunk, off_t(offset)) }
                if n < 0 { if errno == EINTR { continue }; throw SandpitError(.internal, "read failed: \(String(cString: strerror(errno)))") }
                if n == 0 { break }
                try await out.send(RPC.notification("fs.chunk", .object([
                    "requestId": requestId, "offset": .int(offset), "data": .string(Base64.encode(Array(buf[0..<n]))),
                ])))
                offset += Int64(n)
                chunks += 1
            }
            return Self.with(access, ["size": .int(offset), "chunks": .int(chunks)])
        default:
            throw SandpitError(.methodNotFound, "method not found: \(method)", details: ["method": .string(method)])
        }
    }

    /// All or nothing: every file goes to a temporary name first; only when
    /// all are written are they renamed into place.
    static func writeAll(_ root: Int32, _ files: [([UInt8], [UInt8], UInt32?)]) throws -> Int64 {
        var temps: [([UInt8], [UInt8])] = []
        let tag = "batch-" + Identifier.make("b").dropFirst(2)
        var bytes: Int64 = 0
        do {
            for (path, data, mode) in files {
                try SandboxFiles.makeParents(root, path)
                let (fd, temp) = try SandboxFiles.createTemp(root, near: path, tag: String(tag), mode: mode)
                temps.append((temp, path))
                defer { close(fd) }
                try SandboxFiles.writeAll(fd, data, path: path)
                bytes += Int64(data.count)
            }
            // A directory in the way would fail its rename half-way through: refuse before any.
            for (_, path) in temps {
                if let e = try? SandboxFiles.stat(root, path), e.type == "dir" {
                    throw SandpitError(.conflict, "\(String(decoding: path, as: UTF8.self)) is a directory",
                                       details: ["path": .string(String(decoding: path, as: UTF8.self))])
                }
            }
            for (temp, path) in temps { try SandboxFiles.rename(root, temp, path) }
        } catch {
            for (temp, _) in temps { SandboxFiles.unlink(root, temp) }
            throw error
        }
        return bytes
    }
}

extension RPCService {
    enum WatchItem: Sendable { case events([FileEvent]), ended(String) }

    /// Starts a watch whose `fs.event` notifications go to this connection,
    /// in order, through one sender task (a slow client loses events, never
    /// memory: past 10,000 queued events it gets one `overflow` instead).
    func watch(_ sid: String, path: [UInt8], recursive: Bool, requestId: JSONValue, peer: Peer, out: any RPCOutbound) async throws -> JSONValue {
        let (stream, feed) = AsyncStream.makeStream(of: WatchItem.self, bufferingPolicy: .bufferingOldest(10_000))
        let dropped = Atomic<Bool>(false)
        let watchId = try await engine.watchFiles(sid, path: path, recursive: recursive, caller: peer.caller, deliver: { events in
            if case .dropped = feed.yield(.events(events)) { dropped.store(true, ordering: .releasing) }
        }, ended: { reason in
            feed.yield(.ended(reason))
            feed.finish()
        })
        peer.fileWatches.withLock { $0[watchId] = sid }
        Task {
            func send(_ o: JSONObject) async {
                var n = o
                n["requestId"] = requestId
                n["watchId"] = .string(watchId)
                n["sandboxId"] = .string(sid)
                try? await out.send(RPC.notification("fs.event", .object(n)))
            }
            for await item in stream {
                if dropped.exchange(false, ordering: .acquiringAndReleasing) {
                    var o: JSONObject = ["type": "overflow"]
                    Self.put(path, "path", into: &o)
                    await send(o)
                }
                switch item {
                case .events(let events):
                    for e in events {
                        var o: JSONObject = ["type": .string(e.type), "isDir": .bool(e.isDirectory)]
                        Self.put(e.path, "path", into: &o)
                        if let f = e.from { Self.put(f, "from", into: &o) }
                        await send(o)
                    }
                case .ended(let reason):
                    peer.fileWatches.withLock { _ = $0.removeValue(forKey: watchId) }
                    await send(["type": "ended", "reason": .string(reason)])
                }
            }
        }
        var o: JSONObject = ["watchId": .string(watchId), "recursive": .bool(recursive)]
        Self.put(path, "path", into: &o)
        return .object(o)
    }
}

