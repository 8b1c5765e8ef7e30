#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import SandpitClient
import SandpitCore
import SandpitOS
import Synchronization

/// This process's terminal: its size, and raw mode for the time a remote
/// terminal owns the keyboard (every key, Ctrl-C included, goes to the sandbox).
final class LocalTerminal: @unchecked Sendable {
    private var saved = termios()
    private var raw = false

    static var isTerminal: Bool { isatty(0) == 1 && isatty(1) == 1 }

    /// Rows and columns of the terminal on stdout (24x80 when it is none).
    static func size() -> (rows: Int, cols: Int) {
        var ws = winsize()
        if ioctl(1, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_row > 0, ws.ws_col > 0 { return (Int(ws.ws_row), Int(ws.ws_col)) }
        return (24, 80)
    }

    func makeRaw() {
        guard isatty(0) == 1, tcgetattr(0, &saved) == 0 else { return }
        var t = saved
        cfmakeraw(&t)
        if tcsetattr(0, TCSAFLUSH, &t) == 0 { raw = true }
    }

    func restore() {
        if raw { tcsetattr(0, TCSAFLUSH, &saved) }
        raw = false
    }
}

/// Runs a command with its stdin kept open (`-i`) and on a terminal (`-t`):
/// keys go to it as they are typed, its output comes back as it is written,
/// the window size follows this terminal's.
enum Interactive {
    static func run(_ c: any RPCClient, sandbox: String, argv: [String], tty: Bool, options: CommandOptions) async throws -> JSONValue {
        var p = try options.params(sandbox: sandbox, argv: argv, forwardStdin: false)
        p["stdin"] = "pipe"
        if tty {
            let (rows, cols) = LocalTerminal.size()
            p["pty"] = ["rows": .int(Int64(rows)), "cols": .int(Int64(cols))]
        }
        p["yieldMs"] = 0
        let started = try await c.call("exec.run", p)
        guard let exec = started["execId"]?.stringValue else { throw SandpitError(.internal, "exec.run returned no execId") }
        for ch in started["chunks"]?.arrayValue ?? [] { write(ch) }
        return try await attach(c, sandbox: sandbox, exec: exec, since: started["nextSeq"]?.intValue ?? 0, tty: tty, sendInput: true)
    }

    static func write(_ ch: JSONValue) {
        let stream = ch["stream"]?.stringValue
        guard stream != "stdin" else { return }
        Console.write(outputBytes(ch), fd: stream == "stderr" ? 2 : 1)
    }

    /// Follows an exec's output until it ends; with `sendInput`, this
    /// process's stdin goes to it, and on a terminal its window size too.
    static func attach(_ c: any RPCClient, sandbox: String, exec: String, since: Int64, tty: Bool, sendInput: Bool) async throws -> JSONValue {
        let terminal = LocalTerminal()
        if tty && LocalTerminal.isTerminal { terminal.makeRaw() }
        defer { terminal.restore() }
        let ids: JSONObject = ["sandboxId": .string(sandbox), "execId": .string(exec)]
        let pump: Task<Void, Never>? = sendInput ? Task { await pumpStdin(c, ids) } : nil
        let resize = tty ? watchResize(c, ids) : nil
        defer {
            pump?.cancel()
            resize?.cancel()
        }
        var params = ids
        params["follow"] = true
        params["sinceSeq"] = .int(since)
        return try await c.call("exec.wait", params) { method, n in
            if method == "exec.output" { write(n) }
        }
    }

    /// stdin → exec.input, in order, until EOF (then `eof`) or the exec ends.
    static func pumpStdin(_ c: any RPCClient, _ ids: JSONObject) async {
        let (chunks, cont) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingOldest(64))
        OSThread.detach {
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(0, $0.baseAddress!, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                if case .terminated = cont.yield(Array(buf[0..<n])) { return }
            }
            cont.finish()
        }
        for await bytes in chunks {
            if Task.isCancelled { return }
            var p = ids
            p["dataBase64"] = .string(Base64.encode(bytes))
            if (try? await c.call("exec.input", p)) == nil { return }
        }
        var p = ids
        p["eof"] = true
        _ = try? await c.call("exec.input", p)
    }

    /// SIGWINCH → exec.resize with this terminal's new size.
    static func watchResize(_ c: any RPCClient, _ ids: JSONObject) -> Task<Void, Never> {
        let watcher = SignalWatcher([SIGWINCH])
        return Task {
            defer { watcher.stop() }
            while !Task.isCancelled {
                guard await watcher.next() > 0 else { return }
                let (rows, cols) = LocalTerminal.size()
                var p = ids
                p["rows"] = .int(Int64(rows))
                p["cols"] = .int(Int64(cols))
                _ = try? await c.call("exec.resize", p)
            }
        }
    }
}

struct Attach: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reattach to a running command: replay its output, then follow it; keys go to it when it has a terminal or an open stdin.",
        discussion: "Exit status as for `sandpit exec`. However this process ends, the command keeps running: attach again, or end it with exec.kill.")
    @Argument(help: "Sandbox id.") var sandboxId: String
    @Argument(help: "Exec id (see `sandpit logs`, `exec.list`).") var execId: String
    @Flag(help: "Only follow the output; send no input.") var noStdin = false
    @Flag(name: [.customShort("t"), .long], help: "The command runs on a terminal: put this one in raw mode and pass its window size on.") var tty = false
    @Option(help: "Replay from this output chunk (default 0: everything kept).") var sinceSeq: Int64 = 0
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.connectDaemon("attach")
        let r = try await Interactive.attach(c, sandbox: sandboxId, exec: execId, since: sinceSeq, tty: tty, sendInput: !noStdin)
        await c.close()
        throw ExitCode(ExitStatus.of(r, timeoutMs: nil))
    }
}
