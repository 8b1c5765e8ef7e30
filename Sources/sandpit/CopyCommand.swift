#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import SandpitClient
import SandpitCore
import SandpitOS

/// `sandpit cp`: files and directories between the host and a sandbox, in
/// either direction, in chunks (any size; neither side holds a whole file).
struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy files or directories between the host and a sandbox: sandpit cp SRC SANDBOX:DST, or sandpit cp SANDBOX:SRC DST.",
        discussion: """
            As with `docker cp`: a directory is copied with everything in it; when the destination is an \
            existing directory, SRC is copied into it under its own name. Paths in the sandbox are relative to \
            its working directory (/home/user) unless absolute. Uploads are atomic per file. Symlinks and \
            special files are skipped with a note: neither side follows a symlink.
            """)

    @Argument(help: "Source: a host path, or SANDBOX:PATH.") var source: String
    @Argument(help: "Destination: SANDBOX:PATH, or a host path.") var destination: String
    @OptionGroup var client: ClientOptions

    static let chunk = 8 << 20

    /// `sb_x:/path` → (sandbox, path); a host path (absolute, relative or with a `/` before any `:`) → nil.
    static func remote(_ arg: String) -> (String, String)? {
        guard let colon = arg.firstIndex(of: ":") else { return nil }
        let sb = arg[..<colon]
        guard !sb.isEmpty, !sb.contains("/"), !sb.hasPrefix(".") else { return nil }
        let path = String(arg[arg.index(after: colon)...])
        return (String(sb), path.isEmpty ? "." : path)
    }

    func run() async throws {
        switch (Self.remote(source), Self.remote(destination)) {
        case (let s?, nil):
            let c = try client.connectDaemon("cp")
            defer { Task { await c.close() } }
            try await download(c, sandbox: s.0, from: s.1, to: destination)
        case (nil, let d?):
            let c = try client.connectDaemon("cp")
            defer { Task { await c.close() } }
            try await upload(c, sandbox: d.0, from: source, to: d.1)
        case (nil, nil): throw ValidationError("one side must be in a sandbox: SANDBOX:PATH")
        case (_?, _?): throw ValidationError("copy between two sandboxes is not supported: copy to the host first")
        }
    }

    static func basename(_ p: String) -> String {
        let trimmed = p.hasSuffix("/") && p.count > 1 ? String(p.dropLast()) : p
        return trimmed.split(separator: "/").last.map(String.init) ?? trimmed
    }

    // MARK: sandbox → host

    func download(_ c: DaemonClient, sandbox: String, from: String, to: String) async throws {
        let top = try await c.call("fs.stat", ["sandboxId": .string(sandbox), "path": .string(from)])
        let target = FS.isDirectory(to) ? to + "/" + Self.basename(from) : to
        guard top["type"]?.stringValue == "dir" else {
            try await downloadFile(c, sandbox, top["path"]?.stringValue ?? from, to: target, mode: top["mode"]?.intValue)
            return
        }
        let root = top["path"]?.stringValue ?? from
        try FS.mkdirs(target)
        var cursor: String?
        var files = 0
        repeat {
            var p: JSONObject = ["sandboxId": .string(sandbox), "path": .string(root), "recursive": true, "limit": 5000]
            if let cursor { p["cursor"] = .string(cursor) }
            let r = try await c.call("fs.list", p)
            for e in r["entries"]?.arrayValue ?? [] {
                guard let path = e["path"]?.stringValue, path.hasPrefix(root + "/") || root == "/" else { continue }
                let rel = String(path.dropFirst(root == "/" ? 1 : root.count + 1))
                let local = target + "/" + rel
                switch e["type"]?.stringValue {
                case "dir": try FS.mkdirs(local, mode: mode_t(e["mode"]?.intValue ?? 0o755) & 0o7777)
                case "file":
                    try await downloadFile(c, sandbox, path, to: local, mode: e["mode"]?.intValue)
                    files += 1
                default: FileHandleStderr.write("sandpit cp: skipped \(path) (\(e["type"]?.stringValue ?? "special file"))\n")
                }
            }
            cursor = r["nextCursor"]?.stringValue
        } while cursor != nil
    }

    func downloadFile(_ c: DaemonClient, _ sandbox: String, _ path: String, to local: String, mode: Int64?) async throws {
        let fd = open(local, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode_t(mode ?? 0o644) & 0o777)
        guard fd >= 0 else { throw OSError(call: "open", errno: errno, path: local) }
        defer { close(fd) }
        var offset: Int64 = 0
        while true {
            let r = try await c.call("fs.read", ["sandboxId": .string(sandbox), "path": .string(path),
                                                 "offset": .int(offset), "length": .int(Int64(Self.chunk))])
            let bytes = Base64.decode(r["data"]?.stringValue ?? "") ?? []
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw OSError(call: "write", errno: errno, path: local) }
                off += n
            }
            offset += Int64(bytes.count)
            if r["eof"] == true || bytes.isEmpty { return }
        }
    }

    // MARK: host → sandbox

    func upload(_ c: DaemonClient, sandbox: String, from: String, to: String) async throws {
        var st = stat()
        guard lstat(from, &st) == 0 else { throw OSError(call: "lstat", errno: errno, path: from) }
        let existing = try? await c.call("fs.stat", ["sandboxId": .string(sandbox), "path": .string(to)])
        let target = existing?["type"]?.stringValue == "dir" ? to + "/" + Self.basename(from) : to
        if (st.st_mode & S_IFMT) == S_IFDIR {
            try await uploadTree(c, sandbox, from, to: target)
        } else {
            try await uploadFile(c, sandbox, from, to: target, mode: st.st_mode & 0o777)
        }
    }

    func uploadTree(_ c: DaemonClient, _ sandbox: String, _ dir: String, to remote: String) async throws {
        var st = stat()
        guard stat(dir, &st) == 0 else { throw OSError(call: "stat", errno: errno, path: dir) }
        _ = try await c.call("fs.mkdir", ["sandboxId": .string(sandbox), "path": .string(remote), "recursive": true,
                                          "mode": .int(Int64(st.st_mode & 0o7777))])
        for name in try FS.entries(dir).sorted() {
            let local = dir + "/" + name
            guard lstat(local, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR: try await uploadTree(c, sandbox, local, to: remote + "/" + name)
            case S_IFREG: try await uploadFile(c, sandbox, local, to: remote + "/" + name, mode: st.st_mode & 0o777)
            default: FileHandleStderr.write("sandpit cp: skipped \(local) (not a regular file or directory)\n")
            }
        }
    }

    /// One file through fs.upload: written beside the target and renamed over it at the end.
    func uploadFile(_ c: DaemonClient, _ sandbox: String, _ local: String, to remote: String, mode: mode_t) async throws {
        let fd = open(local, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw OSError(call: "open", errno: errno, path: local) }
        defer { close(fd) }
        let u = try await c.call("fs.upload", ["sandboxId": .string(sandbox), "path": .string(remote), "mode": .int(Int64(mode))])
        guard let id = u["uploadId"]?.stringValue else { throw SandpitError(.internal, "fs.upload returned no uploadId") }
        let size = Int(u["maxChunkBytes"]?.intValue ?? Int64(Self.chunk))
        var buf = [UInt8](repeating: 0, count: min(Self.chunk, max(4096, size)))
        var offset: Int64 = 0
        do {
            while true {
                var filled = 0
                while filled < buf.count {
                    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
                    if n < 0 && errno == EINTR { continue }
                    if n < 0 { throw OSError(call: "read", errno: errno, path: local) }
                    if n == 0 { break }
                    filled += n
                }
                if filled == 0 { break }
                _ = try await c.call("fs.uploadChunk", ["uploadId": .string(id), "offset": .int(offset),
                                                        "data": .string(Base64.encode(Array(buf[0..<filled])))])
                offset += Int64(filled)
                if filled < buf.count { break }
            }
            _ = try await c.call("fs.uploadCommit", ["uploadId": .string(id)])
        } catch {
            _ = try? await c.call("fs.uploadAbort", ["uploadId": .string(id)])
            throw error
        }
    }
}
