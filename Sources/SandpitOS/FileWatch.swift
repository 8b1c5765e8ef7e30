#if canImport(Glibc)
import Glibc
#endif
import CSandpit
import SandpitCore
import Synchronization

/// One change under a watched directory, with paths as the sandbox sees them.
public struct FileEvent: Sendable, Equatable {
    /// `created`, `modified`, `deleted`, `renamed` (with `from`), or `overflow`
    /// (the kernel queue or the client fell behind and events were lost).
    public var type: String
    public var path: [UInt8]
    public var from: [UInt8]?
    public var isDirectory: Bool

    public init(type: String, path: [UInt8], from: [UInt8]? = nil, isDirectory: Bool = false) {
        self.type = type
        self.path = path
        self.from = from
        self.isDirectory = isDirectory
    }
}

/// inotify watches on a directory (and, recursively, its subdirectories)
/// inside a sandbox's root, read on a thread of its own.
///
/// Every directory is opened with `sp_open_in_root` (the kernel keeps the
/// lookup inside the root) and watched through its `/proc/self/fd` entry, so
/// a watch can never be placed on a host path. The watch holds no reference
/// to the sandbox's mounts: when the sandbox's root goes away (stop,
/// hibernate, delete, restore) the kernel drops the watches and the watch ends.
public final class FileWatch: Sendable {
    /// Directories one recursive watch follows at most.
    public static let maxDirectories = 8192

    let inotifyFd: Int32
    let wakeFd: Int32
    /// Guards the fds: the thread closes them when it ends, `stop` only signals a live thread.
    let life = Mutex<(alive: Bool, stopping: Bool)>((true, false))

    static let mask: UInt32 = UInt32(IN_CREATE | IN_DELETE | IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF)
        | UInt32(IN_ONLYDIR) | UInt32(IN_EXCL_UNLINK)

    private init(inotifyFd: Int32, wakeFd: Int32) {
        self.inotifyFd = inotifyFd
        self.wakeFd = wakeFd
    }

    /// Starts watching `path` (a directory). Call it on a thread whose
    /// filesystem ids are the sandbox user's: the initial watches are placed
    /// with its permissions, and the reader thread takes the same ids.
    /// `openRoot` opens the sandbox's root directory (nil once it is gone).
    public static func start(openRoot: @escaping @Sendable () -> Int32?, path: [UInt8], recursive: Bool, uid: UInt32, gid: UInt32,
                             deliver: @escaping @Sendable ([FileEvent]) -> Void,
                             ended: @escaping @Sendable (String) -> Void) throws(SandpitError) -> FileWatch {
        let ifd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard ifd >= 0 else { throw SandboxFiles.fail("inotify_init1", path) }
        var pipeFds: [Int32] = [-1, -1]
        guard sp_pipe_cloexec(&pipeFds) == 0 else {
            close(ifd)
            throw SandboxFiles.fail("pipe2", path)
        }
        let tree = Tree(inotifyFd: ifd, recursive: recursive)
        do {
            guard let root = openRoot() else { throw SandpitError(.invalidState, "the sandbox has stopped") }
            defer { close(root) }
            let fd = try SandboxFiles.open(root, path, O_RDONLY | O_DIRECTORY)
            tree.rootPath = Self.trimmed(path)
            try tree.add(fd: fd, path: tree.rootPath, isRoot: true)
        } catch let e as SandpitError {
            close(ifd); close(pipeFds[0]); close(pipeFds[1])
            throw e
        } catch {
            close(ifd); close(pipeFds[0]); close(pipeFds[1])
            throw SandpitError(.internal, "\(error)")
        }
        let w = FileWatch(inotifyFd: ifd, wakeFd: pipeFds[1])
        let readEnd = pipeFds[0]
        let treeBox = UncheckedBox(tree)
        OSThread.detach {
            _ = sp_set_fsids(uid, gid)
            let reason = w.run(tree: treeBox.value, wakeRead: readEnd, openRoot: openRoot, deliver: deliver)
            w.life.withLock { l in
                l.alive = false
                close(w.inotifyFd)
                close(w.wakeFd)
                close(readEnd)
            }
            ended(reason)
        }
        return w
    }

    /// Ends the watch (its `ended` callback runs with "unwatched").
    public func stop() {
        life.withLock { l in
            guard l.alive, !l.stopping else { return }
            l.stopping = true
            var one: UInt8 = 1
            _ = write(wakeFd, &one, 1)
        }
    }

    static func trimmed(_ p: [UInt8]) -> [UInt8] {
        var p = p
        while p.count > 1 && p.last == UInt8(ascii: "/") { p.removeLast() }
        return p
    }

    static func join(_ dir: [UInt8], _ name: [UInt8]) -> [UInt8] {
        dir == [UInt8(ascii: "/")] ? dir + name : dir + [UInt8(ascii: "/")] + name
    }

    /// The watched directories: wd → path. Used only by the reader thread (and by `start` before it).
    final class Tree {
        let inotifyFd: Int32
        let recursive: Bool
        var rootPath: [UInt8] = []
        var rootWd: Int32 = -1
        var paths: [Int32: [UInt8]] = [:]
        var full = false

        init(inotifyFd: Int32, recursive: Bool) {
            self.inotifyFd = inotifyFd
            self.recursive = recursive
        }

        /// Watches the directory open at `fd` (closing it) and, when recursive,
        /// its subdirectories (opened without following symlinks). Returns the
        /// entries found below it, for directories that appeared after the
        /// watch started (their contents may predate their watch).
        @discardableResult
        func add(fd: Int32, path: [UInt8], isRoot: Bool = false, collect: Bool = false) throws(SandpitError) -> [FileEvent] {
            guard paths.count < FileWatch.maxDirectories else {
                close(fd)
                full = true
                return []
            }
            let wd = inotify_add_watch(inotifyFd, "/proc/self/fd/\(fd)", FileWatch.mask)
            if wd < 0 {
                let e = errno
                close(fd)
                if isRoot { throw SandboxFiles.fail("inotify_add_watch", path, e) }
                return []
            }
            paths[wd] = path
            if isRoot { rootWd = wd }
            guard recursive || collect else { close(fd); return [] }
            guard let d = fdopendir(fd) else { close(fd); return [] }
            defer { closedir(d) }
            var found: [FileEvent] = []
            var subdirs: [([CChar], [UInt8])] = []
            while let e = readdir(d) {
                let name = SandboxFiles.entryName(e)
                if name == [46, 0] || name == [46, 46, 0] { continue }
                let p = FileWatch.join(path, name.dropLast().map { UInt8(bitPattern: $0) })
                let isDir = e.pointee.d_type == UInt8(DT_DIR)
                if collect { found.append(FileEvent(type: "created", path: p, isDirectory: isDir)) }
                if isDir && recursive { subdirs.append((name, p)) }
            }
            for (name, p) in subdirs {
                let sub = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if sub >= 0 { found += try add(fd: sub, path: p, collect: collect) }
            }
            return found
        }

        /// Forgets the watches at and below `path` (a directory moved out of the tree).
        func drop(below path: [UInt8]) {
            for (wd, p) in paths where p == path || p.starts(with: path + [UInt8(ascii: "/")]) {
                inotify_rm_watch(inotifyFd, wd)
                paths[wd] = nil
            }
        }

        /// Renames the watched paths at and below `from` (a directory moved inside the tree).
        func move(_ from: [UInt8], to: [UInt8]) {
            for (wd, p) in paths where p == from || p.starts(with: from + [UInt8(ascii: "/")]) {
                paths[wd] = to + p[from.count...]
            }
        }
    }

    /// The reader loop; returns why the watch ended.
    private func run(tree: Tree, wakeRead: Int32, openRoot: @Sendable () -> Int32?,
                     deliver: @Sendable ([FileEvent]) -> Void) -> String {
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            var fds = [pollfd(fd: inotifyFd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                return "poll failed: \(String(cString: strerror(errno)))"
            }
            if fds[1].revents != 0 { return "unwatched" }
            let n = buf.withUnsafeMutableBytes { read(inotifyFd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return "read failed: \(String(cString: strerror(errno)))"
            }
            var raw: [(wd: Int32, mask: UInt32, cookie: UInt32, name: [UInt8])] = []
            var off = 0
            let header = MemoryLayout<inotify_event>.size
            while off + header <= n {
                let (wd, mask, cookie, len) = buf.withUnsafeBytes { b -> (Int32, UInt32, UInt32, Int) in
                    (b.loadUnaligned(fromByteOffset: off, as: Int32.self), b.loadUnaligned(fromByteOffset: off + 4, as: UInt32.self),
                     b.loadUnaligned(fromByteOffset: off + 8, as: UInt32.self), Int(b.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self)))
                }
                let name = Array(buf[(off + header)..<(off + header + len)].prefix { $0 != 0 })
                raw.append((wd, mask, cookie, name))
                off += header + len
            }
            var out: [FileEvent] = []
            var end: String?
            var i = 0
            while i < raw.count {
                let e = raw[i]
                i += 1
                if e.mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    out.append(FileEvent(type: "overflow", path: tree.rootPath))
                    continue
                }
                if e.mask & UInt32(IN_IGNORED) != 0 {
                    tree.paths[e.wd] = nil
                    if e.wd == tree.rootWd && end == nil { end = "the watched directory is gone (deleted, or the sandbox stopped, hibernated or was restored)" }
                    continue
                }
                if e.mask & UInt32(IN_UNMOUNT) != 0 { end = "the sandbox's filesystem was unmounted"; continue }
                guard let dir = tree.paths[e.wd] else { continue }
                let isDir = e.mask & UInt32(IN_ISDIR) != 0
                if e.mask & UInt32(IN_DELETE_SELF) != 0 {
                    if e.wd == tree.rootWd { out.append(FileEvent(type: "deleted", path: dir, isDirectory: true)); end = "the watched directory was deleted" }
                    continue
                }
                if e.mask & UInt32(IN_MOVE_SELF) != 0 {
                    if e.wd == tree.rootWd { end = "the watched directory was moved" }
                    continue
                }
                let path = FileWatch.join(dir, e.name)
                if e.mask & UInt32(IN_MOVED_FROM) != 0 {
                    // A rename inside the tree arrives as FROM and TO with one cookie, back to back.
                    if i < raw.count, raw[i].mask & UInt32(IN_MOVED_TO) != 0, raw[i].cookie == e.cookie, let toDir = tree.paths[raw[i].wd] {
                        let to = FileWatch.join(toDir, raw[i].name)
                        i += 1
                        out.append(FileEvent(type: "renamed", path: to, from: path, isDirectory: isDir))
                        if isDir { tree.move(path, to: to) }
                    } else {
                        out.append(FileEvent(type: "deleted", path: path, isDirectory: isDir))
                        if isDir { tree.drop(below: path) }
                    }
                    continue
                }
                let type = e.mask & UInt32(IN_DELETE) != 0 ? "deleted" : e.mask & UInt32(IN_MODIFY) != 0 ? "modified" : "created"
                if type == "modified", let last = out.last, last.type == "modified", last.path == path { continue }
                out.append(FileEvent(type: type, path: path, isDirectory: isDir))
                if type == "created" && isDir && tree.recursive, let root = openRoot() {
                    // Watch the new directory, and report what was made in it before the watch existed.
                    if let fd = try? SandboxFiles.open(root, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW) {
                        out += (try? tree.add(fd: fd, path: path, collect: true)) ?? []
                    }
                    close(root)
                }
            }
            if tree.full {
                out.append(FileEvent(type: "overflow", path: tree.rootPath))
                tree.full = false
            }
            if !out.isEmpty { deliver(out) }
            if let end { return end }
        }
    }
}

/// Moves a value that is used by one thread at a time across a thread start.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
