#if canImport(Glibc)
import Glibc
#endif
import CSandpit

/// Starts a sandbox's first process (the agent) in fresh namespaces.
public enum SandboxSpawner {
    public struct Spawned: Sendable {
        public var pid: Int32
        public var pidfd: Int32
        public var controlFd: Int32   // daemon's end of the agent socket
        /// Started by a zygote's agent (NEST): not our child, so its exit is
        /// seen on the pidfd, not reaped with waitpid.
        public var nested = false

        public init(pid: Int32, pidfd: Int32, controlFd: Int32, nested: Bool = false) {
            self.pid = pid
            self.pidfd = pidfd
            self.controlFd = controlFd
            self.nested = nested
        }
    }

    /// Clones the agent with new user, pid, mount, net, ipc and uts namespaces.
    /// `prepare` runs after clone and before the child may proceed: it writes the
    /// id maps and moves the child into its cgroup. The user namespace is owned
    /// by host uid `owner` (0: the daemon's root), which the kernel charges for
    /// per-user limits of everything in the sandbox.
    public static func spawn(agentFd: Int32, argv: [String], rootMount: FileDescriptor, usrMount: FileDescriptor?,
                             devMount: FileDescriptor, cgroupDir: FileDescriptor? = nil, nestSocket: FileDescriptor? = nil, owner: UInt32 = 0,
                             prepare: (Int32) throws -> Void) throws -> Spawned {
        var sv: [Int32] = [-1, -1]
        _ = try sys("socketpair") { sp_socketpair_cloexec(&sv) }
        var syncp: [Int32] = [-1, -1]
        do {
            _ = try sys("pipe2") { sp_pipe_cloexec(&syncp) }
        } catch {
            close(sv[0]); close(sv[1])
            throw error
        }
        defer { close(sv[1]); close(syncp[0]); if syncp[1] >= 0 { close(syncp[1]) } }

        var maps = [sp_fd_map(src: sv[1], dst: SP_AGENT_FD_CTRL), sp_fd_map(src: rootMount.raw, dst: SP_AGENT_FD_ROOT)]
        if let u = usrMount { maps.append(sp_fd_map(src: u.raw, dst: SP_AGENT_FD_USR)) }
        maps.append(sp_fd_map(src: devMount.raw, dst: SP_AGENT_FD_DEV))
        if let c = cgroupDir { maps.append(sp_fd_map(src: c.raw, dst: SP_AGENT_FD_CGROUP)) }
        if let n = nestSocket { maps.append(sp_fd_map(src: n.raw, dst: SP_AGENT_FD_NEST)) }
        let cargv = argv.map { strdup($0) } + [nil]
        defer { for p in cargv { free(p) } }
        let cenv: [UnsafeMutablePointer<CChar>?] = [nil]
        let flags = sp_clone_newuser() | sp_clone_newpid() | sp_clone_newns() | sp_clone_newnet() | sp_clone_newipc() | sp_clone_newuts()
        // The child reads argv, the fd maps and `args` from our memory until it
        // has exec'd, so all of it stays in scope until sp_spawn_release.
        return try cargv.withUnsafeBufferPointer { av in
            try cenv.withUnsafeBufferPointer { ev in
                try maps.withUnsafeBufferPointer { mp in
                    // On the heap: `&local` would only be valid during the call.
                    let args = UnsafeMutablePointer<sp_spawn_args>.allocate(capacity: 1)
                    args.initialize(to: sp_spawn_args(exec_fd: agentFd, argv: av.baseAddress, envp: ev.baseAddress,
                                                      fds: mp.baseAddress, nfds: Int32(mp.count), sync_fd: syncp[0],
                                                      report_fd: SP_AGENT_FD_CTRL, clone_flags: flags, owner_uid: owner, watch_fd: -1))
                    defer { args.deallocate() }
                    var pidfd: Int32 = -1
                    var pid: pid_t = -1
                    guard let handle = sp_spawn_sandbox(args, &pidfd, &pid) else {
                        let e = errno
                        close(sv[0])
                        throw OSError(call: "clone", errno: e)
                    }
                    do {
                        try prepare(pid)
                    } catch {
                        _ = sp_pidfd_send_signal(pidfd, SIGKILL)
                        _ = sp_spawn_release(handle, -1)
                        var st: Int32 = 0
                        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
                        close(pidfd)
                        close(sv[0])
                        throw error
                    }
                    var go: UInt8 = 1
                    _ = write(syncp[1], &go, 1)
                    close(syncp[1])
                    syncp[1] = -1
                    // A child that has not exec'd in 10 s is killed; its
                    // agent then never says ready and the start fails.
                    _ = sp_spawn_release(handle, 10_000)
                    return Spawned(pid: pid, pidfd: pidfd, controlFd: sv[0])
                }
            }
        }
    }

    /// Clones sandboxes from then on from a mount namespace with nothing of
    /// the host's in it, on a thread of its own (see sp_anchor.c), so a
    /// sandbox holds no host mount alive. `scratch` is an empty directory it
    /// is built on (in a private copy of the namespace only). Once per process.
    public static func useAnchorNamespace(scratch: String) throws(OSError) {
        try FS.mkdirs(scratch, mode: 0o700)
        let ns = FileDescriptor(try sys("anchor mount namespace", path: scratch) { sp_anchor_mntns(scratch) })
        defer { ns.close() }
        _ = try sys("anchor thread") { sp_anchor_start(ns.raw) }
    }

    /// Whether the executable at `path` is statically linked (an ELF file
    /// without a program interpreter): only such an agent can be exec'd in
    /// the anchor namespace, where no dynamic loader is reachable.
    public static func isStaticExecutable(_ path: String) -> Bool {
        guard let data = try? FS.readFile(path), data.count >= 64, data[0] == 0x7f, data[1] == 0x45, data[4] == 2 else { return false }
        func u(_ off: Int, _ n: Int) -> Int { (0..<n).reduce(0) { $0 | Int(data[off + $1]) << (8 * $1) } }
        let phoff = u(32, 8), phentsize = u(54, 2), phnum = u(56, 2)
        guard phentsize >= 4, phoff + phnum * phentsize <= data.count else { return false }
        for i in 0..<phnum where u(phoff + i * phentsize, 4) == 3 { return false }   // PT_INTERP
        return true
    }

    public static func kill(pidfd: Int32, signal: Int32 = SIGKILL) {
        _ = sp_pidfd_send_signal(pidfd, signal)
    }

    /// False once the process has exited (a pidfd polls readable then).
    public static func isAlive(pidfd: Int32) -> Bool {
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 0
    }

    /// Blocks until a process that is not our child has exited (its pidfd polls readable).
    public static func awaitExit(pidfd: Int32) {
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, -1) < 0 && errno == EINTR {}
    }

    /// The pid (in our pid namespace) a pidfd refers to, from its fdinfo.
    public static func pid(ofPidfd fd: Int32) throws(OSError) -> Int32 {
        let text = String(decoding: try FS.readFile("/proc/self/fdinfo/\(fd)"), as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix("Pid:") {
            if let p = Int32(line.dropFirst(4).filter { $0 != " " && $0 != "\t" }), p > 0 { return p }
        }
        throw OSError(call: "pidfd pid", errno: ESRCH)
    }

    /// Sends descriptors as one SCM_RIGHTS message.
    public static func sendDescriptors(_ fds: [Int32], over socket: Int32) throws(OSError) {
        _ = try sys("sendmsg") { fds.withUnsafeBufferPointer { sp_send_fds(socket, $0.baseAddress, Int32($0.count)) } }
    }

    /// Receives one descriptor, waiting at most `timeoutMs`.
    public static func receiveDescriptor(over socket: Int32, timeoutMs: Int32) throws(OSError) -> Int32 {
        var fd: Int32 = -1
        _ = try sys("recvmsg") { sp_recv_fds(socket, &fd, 1, timeoutMs) }
        guard fd >= 0 else { throw OSError(call: "recvmsg", errno: EBADMSG) }   // a message without one
        return fd
    }

    /// A process's pids from our pid namespace inward (NSpid: ours first,
    /// its own namespace's last); nil if it is gone.
    public static func nsPids(of pid: Int32) -> [Int32]? {
        guard let status = try? FS.readText("/proc/\(pid)/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") }) else { return nil }
        return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().compactMap { Int32($0) }
    }

    /// A process's children (pids in our namespace).
    public static func children(of pid: Int32) -> [Int32] {
        ((try? FS.readText("/proc/\(pid)/task/\(pid)/children")) ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int32($0) }
    }

    /// Blocks until `pid` has exited and returns its wait status.
    public static func reap(_ pid: Int32) -> Int32 {
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        return st
    }
}
