#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import SandpitCore
import SandpitOS
import Synchronization

/// How a file request reached the sandbox's files.
public struct FileAccess: Sendable {
    /// The sandbox was hibernated and had to be started (writes only).
    public var woke: Bool
    /// Served from a hibernated sandbox's saved files without starting it.
    public var fromCheckpoint: Bool

    public var json: JSONObject {
        var o: JSONObject = ["woke": .bool(woke)]
        if fromCheckpoint { o["fromCheckpoint"] = true }
        return o
    }
}

/// An open upload: a temporary file that becomes `path` on commit.
final class Upload: Sendable {
    let id: String
    let sandboxId: String
    let path: [UInt8]
    let temp: [UInt8]
    let fd: Int32
    let owner: Int64
    let written = Atomic<Int64>(0)
    /// The first chunk that could not be written: the upload can only be aborted after it.
    let failure = Mutex<SandpitError?>(nil)
    init(id: String, sandboxId: String, path: [UInt8], temp: [UInt8], fd: Int32, owner: Int64) {
        self.id = id
        self.sandboxId = sandboxId
        self.path = path
        self.temp = temp
        self.fd = fd
        self.owner = owner
    }
}

extension Engine {
    /// Paths from clients: absolute, or relative to the template's working directory.
    func absolute(_ path: [UInt8], workdir: String) -> [UInt8] {
        path.first == UInt8(ascii: "/") ? path : Array(workdir.utf8) + [UInt8(ascii: "/")] + path
    }

    /// Runs `body` on a dedicated thread with a directory fd of the sandbox's
    /// root as the sandbox sees it and the sandbox user's filesystem ids.
    /// Running and paused sandboxes are reached through their agent's root
    /// (paused ones stay frozen); a hibernated one is read from its saved
    /// files (a read-only overlay) unless `write`, which wakes it.
    /// `modifies` (default: `write`) says the body changes files, so a
    /// checkpoint must not copy the disk meanwhile (`DiskWriterGate`).
    public func withFiles<T: Sendable>(_ id: String, caller: Caller, write: Bool, modifies: Bool? = nil,
                                       _ body: @escaping @Sendable (_ root: Int32, _ resolve: @Sendable ([UInt8]) -> [UInt8]) throws -> T)
        async throws -> (T, FileAccess)
    {
        var access = FileAccess(woke: false, fromCheckpoint: false)
        if write, try await wake(id, caller: caller) != nil { access.woke = true }
        if let rt = try runtime(id, caller: caller), !rt.hasExited {
            rt.idle.withLock { $0.touch(now: Clock.nowMs()) }
            let pid = rt.spawned.pid, cfg = rt.image.config, ids = config.ids
            let gate = rt.diskWriters, modifies = modifies ?? write
            let result = try await EngineThread.run { () throws -> T in
                let root = try sys("open", path: "/proc/\(pid)/root") { open("/proc/\(pid)/root", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
                defer { close(root) }
                let run = {
                    try FileCredentials.with(uid: ids.hostID(cfg.uid), gid: ids.hostID(cfg.gid)) {
                        try body(root) { self.absolute($0, workdir: cfg.workdir) }
                    }
                }
                return modifies ? try gate.write(run) : try run()
            }
            return (result, access)
        }
        let r = try await sandbox(id, caller: caller)
        guard r.state == .hibernated || r.state == .stopped else {
            throw SandpitError(.invalidState, "sandbox \(id) is \(r.state.rawValue)", details: ["state": .string(r.state.rawValue)])
        }
        guard !write else {
            throw SandpitError(.invalidState, "sandbox \(id) is stopped; restore it (sandbox.restore) to write files", details: ["state": .string(r.state.rawValue)])
        }
        let img = try await image(r.templateId)
        let diskPath = sandboxDir(id) + "/disk.img"
        guard FS.exists(diskPath) else {
            throw SandpitError(.invalidState, "sandbox \(id) has no saved disk to read from", details: ["state": .string(r.state.rawValue)])
        }
        let ids = config.ids
        access.fromCheckpoint = true
        let result = try await EngineThread.run { () throws -> T in
            let disk = try SandboxDisk.mount(diskPath)
            defer { disk.close() }
            let root = try DetachedMount.readOnlyOverlay(lower: [SandboxDisk.path(in: disk, SandboxDisk.upper)] + img.lower)
            defer { root.close() }
            return try FileCredentials.with(uid: ids.hostID(img.config.uid), gid: ids.hostID(img.config.gid)) {
                try body(root.raw) { self.absolute($0, workdir: img.config.workdir) }
            }
        }
        return (result, access)
    }

    // MARK: uploads

    /// Copies a whole host file into the sandbox in the kernel (a local
    /// client's descriptor, taken with pidfd_getfd): a temporary file beside
    /// `path`, filled with copy_file_range/sendfile, renamed over it. Only a
    /// regular file is taken (a pipe or device could block or never end).
    public func upload(from source: Int32, to path: [UInt8], in id: String, mode: UInt32?, caller: Caller) async throws -> (Int64, FileAccess) {
        var st = stat()
        guard fstat(source, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw SandpitError.invalidParams("fd", "is not a regular file (a pipe, socket, device or directory cannot be uploaded this way)")
        }
        return try await withFiles(id, caller: caller, write: true) { root, resolve in
            let p = resolve(path)
            try SandboxFiles.makeParents(root, p)
            let (fd, temp) = try SandboxFiles.createTemp(root, near: p, tag: "upload-fd", mode: mode)
            defer { close(fd) }
            let n = sp_copy_fd(source, 0, fd)
            if n < 0 {
                let e = errno
                SandboxFiles.unlink(root, temp)
                // A full disk is limit_exceeded, named as for every file call; reading the client's file failed otherwise.
                if e == ENOSPC || e == EDQUOT || e == EFBIG { throw SandboxFiles.fail("copy into", p, e) }
                throw SandpitError(.internal, "copying into \(String(decoding: p, as: UTF8.self)) failed: \(String(cString: strerror(e)))")
            }
            do { try SandboxFiles.rename(root, temp, p) } catch {
                SandboxFiles.unlink(root, temp)
                throw error
            }
            return Int64(n)
        }
    }

    /// Copies a sandbox file into a host descriptor of the client's (at its
    /// file position), in the kernel. The sandbox file is opened confined, as
    /// the sandbox's user, read-only.
    public func download(_ path: [UInt8], in id: String, to target: Int32, caller: Caller) async throws -> (Int64, FileAccess) {
        var st = stat()
        guard fstat(target, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw SandpitError.invalidParams("fd", "is not a regular file open for writing")
        }
        let (fd, access) = try await withFiles(id, caller: caller, write: false) { root, resolve in
            try SandboxFiles.openRegular(root, resolve(path))
        }
        defer { close(fd) }
        let n = try await EngineThread.run { () throws -> Int64 in
            let n = sp_copy_fd(fd, 0, target)
            if n < 0 { throw SandpitError.invalidParams("fd", "writing to it failed: \(String(cString: strerror(errno)))") }
            return Int64(n)
        }
        return (n, access)
    }

    /// Starts an upload: an exclusive temporary file beside `path`.
    public func beginUpload(_ id: String, path: [UInt8], mode: UInt32?, caller: Caller) async throws -> (String, FileAccess) {
        let uploadId = Identifier.make("up")
        let tag = String(uploadId.dropFirst(3))
        let ((fd, temp, target), access) = try await withFiles(id, caller: caller, write: true) { root, resolve in
            let p = resolve(path)
            try SandboxFiles.makeParents(root, p)
            let (fd, temp) = try SandboxFiles.createTemp(root, near: p, tag: "upload-" + tag, mode: mode)
            return (fd, temp, p)
        }
        uploads.withLock { $0[uploadId] = Upload(id: uploadId, sandboxId: id, path: target, temp: temp, fd: fd, owner: caller.uid) }
        return (uploadId, access)
    }

    func upload(_ uploadId: String, caller: Caller) throws(SandpitError) -> Upload {
        guard let u = uploads.withLock({ $0[uploadId] }), caller.admin || u.owner == caller.uid else {
            throw SandpitError.notFound("Upload", uploadId)
        }
        return u
    }

    /// Writes one chunk at `offset` (chunks may arrive in any order).
    public func uploadChunk(_ uploadId: String, offset: Int64, data: [UInt8], caller: Caller) async throws -> Int64 {
        let u = try upload(uploadId, caller: caller)
        if let f = u.failure.withLock({ $0 }) { throw f }
        do {
            let gate = registry.withLock { $0[u.sandboxId] }?.diskWriters
            try await EngineThread.run {
                if let gate { try gate.write { try SandboxFiles.writeAll(u.fd, data, at: offset, path: u.path) } }
                else { try SandboxFiles.writeAll(u.fd, data, at: offset, path: u.path) }
            }
        } catch {
            let e = error as? SandpitError ?? SandpitError(.internal, "\(error)")
            u.failure.withLock { if $0 == nil { $0 = e } }
            throw e
        }
        let end = offset + Int64(data.count)
        var cur = u.written.load(ordering: .relaxed)
        while end > cur {
            let (ok, now) = u.written.compareExchange(expected: cur, desired: end, ordering: .relaxed)
            if ok { break }
            cur = now
        }
        return max(end, cur)
    }

    /// Renames the finished upload over its path; returns its size. An upload
    /// a chunk of which failed (a full disk, say) is dropped instead, and the
    /// commit answers with that chunk's error: a partial file never lands.
    public func commitUpload(_ uploadId: String, caller: Caller) async throws -> Int64 {
        let u = try upload(uploadId, caller: caller)
        if let f = u.failure.withLock({ $0 }) {
            await abortUpload(uploadId, caller: caller)
            throw SandpitError(f.code, "the upload failed and was dropped: \(f.message)", details: f.details)
        }
        uploads.withLock { _ = $0.removeValue(forKey: uploadId) }
        defer { close(u.fd) }
        var st = stat()
        _ = fstat(u.fd, &st)
        let size = Int64(st.st_size)
        _ = try await withFiles(u.sandboxId, caller: caller, write: true) { root, _ in
            do { try SandboxFiles.rename(root, u.temp, u.path) } catch {
                SandboxFiles.unlink(root, u.temp)
                throw error
            }
        }
        return size
    }

    /// Drops an upload and its temporary file (abort, or the client went away).
    public func abortUpload(_ uploadId: String, caller: Caller) async {
        guard let u = try? upload(uploadId, caller: caller) else { return }
        uploads.withLock { _ = $0.removeValue(forKey: uploadId) }
        close(u.fd)
        _ = try? await withFiles(u.sandboxId, caller: .inProcess, write: false, modifies: true) { root, _ in SandboxFiles.unlink(root, u.temp) }
    }
}

extension Engine {
    /// Directory watches one sandbox may have at once.
    static let maxFileWatches = 64

    /// Watches a directory of a live (running or paused) sandbox. `deliver`
    /// gets batches of events in order; `ended` runs once, when the watch
    /// stops (unwatched, the directory deleted, or the sandbox went away).
    public func watchFiles(_ id: String, path: [UInt8], recursive: Bool, caller: Caller,
                           deliver: @escaping @Sendable ([FileEvent]) -> Void,
                           ended: @escaping @Sendable (String) -> Void) async throws -> String {
        guard let rt = try runtime(id, caller: caller), !rt.hasExited else {
            let r = try await sandbox(id, caller: caller)
            throw SandpitError(.invalidState, "sandbox \(id) is \(r.state.rawValue): watches need a live sandbox (wake it with any request that runs code)",
                               details: ["state": .string(r.state.rawValue)])
        }
        guard rt.fileWatches.withLock({ $0.count }) < Self.maxFileWatches else {
            throw SandpitError(.limitExceeded, "sandbox \(id) already has \(Self.maxFileWatches) watches")
        }
        let watchId = Identifier.make("fw")
        let pid = rt.spawned.pid, cfg = rt.image.config
        let uid = config.ids.hostID(cfg.uid), gid = config.ids.hostID(cfg.gid)
        let target = absolute(path, workdir: cfg.workdir)
        let w = try await EngineThread.run {
            try FileCredentials.with(uid: uid, gid: gid) {
                try FileWatch.start(openRoot: {
                    // /proc/PID/root is opened with the daemon's own ids, then the caller's are restored.
                    _ = sp_set_fsids(0, 0)
                    defer { _ = sp_set_fsids(uid, gid) }
                    let fd = open("/proc/\(pid)/root", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                    return fd >= 0 ? fd : nil
                }, path: target, recursive: recursive, uid: uid, gid: gid, deliver: deliver, ended: { [weak rt] reason in
                    rt?.fileWatches.withLock { _ = $0.removeValue(forKey: watchId) }
                    ended(reason)
                })
            }
        }
        rt.fileWatches.withLock { $0[watchId] = w }
        if rt.hasExited { w.stop() }   // lost a race with teardown
        return watchId
    }

    /// Stops a watch; false when it had already ended.
    @discardableResult
    public func unwatchFiles(_ id: String, watchId: String, caller: Caller) throws(SandpitError) -> Bool {
        guard let rt = try runtime(id, caller: caller), let w = rt.fileWatches.withLock({ $0.removeValue(forKey: watchId) }) else { return false }
        w.stop()
        return true
    }
}
