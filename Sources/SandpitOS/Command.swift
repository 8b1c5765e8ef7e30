#if canImport(Glibc)
import Glibc
import CSandpit
#endif

/// Runs a host helper (mkfs, mount) with posix_spawn and collects its output.
/// Used only for daemon setup, never for sandbox work.
public enum HostCommand {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var argv: [String]
        public var status: Int32
        public var output: String
        public var description: String { "\(argv.joined(separator: " ")) exited with \(status): \(output)" }
    }

    @discardableResult
    public static func run(_ argv: [String]) throws -> String {
        var pipefd: [Int32] = [-1, -1]
        _ = try sys("pipe2") { sp_pipe_cloexec(&pipefd) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        _ = "/dev/null".withCString { posix_spawn_file_actions_addopen(&actions, 0, $0, O_RDONLY, 0) }
        posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipefd[1], 2)
        let cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        let env: [UnsafeMutablePointer<CChar>?] = (["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"] as [String]).map { strdup($0) } + [nil]
        defer { for p in env { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, cargs, env)
        close(pipefd[1])
        if rc != 0 {
            close(pipefd[0])
            throw OSError(call: "posix_spawn", errno: rc, path: argv[0])
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(pipefd[0], $0.baseAddress!, $0.count) }
            if n > 0 { out += buf[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
        close(pipefd[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = String(decoding: out, as: UTF8.self)
        let exited = (status & 0x7f) == 0
        let code = (status >> 8) & 0xff
        if !exited || code != 0 { throw Failure(argv: argv, status: exited ? code : 128 + (status & 0x7f), output: text) }
        return text
    }
}
