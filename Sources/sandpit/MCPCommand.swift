#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import struct Foundation.Data
import Logging
import MCP
import SandpitClient
import SandpitCore
import SandpitEngine
import Synchronization

/// `sandpit mcp`: a Model Context Protocol server on stdio. The session's
/// sandbox is made on the first tool call and deleted when the session ends
/// (stdin closes, SIGTERM or SIGINT; and, through a daemon, when this process
/// dies in any way: the daemon deletes what a connection tied to itself).
/// Tool calls run concurrently on one multiplexed connection.
struct MCPServe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp",
        abstract: "Serve the Model Context Protocol on stdin/stdout: tools that run code and commands in one sandbox per session.",
        discussion: """
            Tools: run_code, run_command, read_file, write_file, list_files, list_checkpoints, rollback, fork. \
            The sandbox is created on the first tool call (once, however many calls race) and deleted when the \
            session ends: stdin closes, SIGTERM or SIGINT, or (with --socket) this process dies. Tool calls run \
            in parallel. Long output keeps its head and tail and says how much was cut.
            """)

    @Option(help: "Template for the session's sandbox.") var template = "default"
    @Option(help: "Policy for the session's sandbox.") var policy = "default"
    @Option(help: "Characters of each output stream given back to the model; the middle of longer output is cut.") var maxOutputChars = 8000
    @OptionGroup var client: ClientOptions

    func run() async throws {
        LoggingSystem.bootstrapOnce()
        let signals = SignalWatcher([SIGTERM, SIGINT, SIGHUP])
        let session = MCPSession(client: try await client.connect(), template: template, policy: policy,
                                 maxOutput: max(200, maxOutputChars))
        let server = Server(name: "sandpit", version: Engine.version,
                            capabilities: .init(tools: .init(listChanged: false)))
        await server.withMethodHandler(ListTools.self) { _ in .init(tools: MCPSession.tools) }
        await server.withMethodHandler(CallTool.self) { params in
            guard MCPSession.tools.contains(where: { $0.name == params.name }) else {
                // The spec's answer to an unknown tool: a protocol error, not a tool result.
                throw MCPError.invalidParams("Unknown tool: \(params.name)")
            }
            return await session.call(params.name, params.arguments ?? [:])
        }
        try await server.start(transport: ParseCheckingTransport(StdioTransport()))
        // Whichever comes first, stdin's end or a signal, ends the other wait.
        await withTaskGroup(of: Bool.self) { g in
            g.addTask { await server.waitUntilCompleted(); return false }
            g.addTask { await signals.next() > 0 }
            if await g.next() == true { await server.stop() } else { signals.stop() }
            await g.waitForAll()
        }
        signals.stop()
        await session.end()
        await server.stop()
    }
}

/// Answers a line that is not JSON with a parse error whose id is null, as
/// JSON-RPC says (the SDK would make up an id); passes everything else on.
actor ParseCheckingTransport: Transport {
    let inner: StdioTransport
    nonisolated var logger: Logger { inner.logger }
    init(_ inner: StdioTransport) { self.inner = inner }

    func connect() async throws { try await inner.connect() }
    func disconnect() async { await inner.disconnect() }
    func send(_ data: Data) async throws { try await inner.send(data) }

    func receive() -> AsyncThrowingStream<Data, Swift.Error> {
        let upstream = inner
        return AsyncThrowingStream { cont in
            let t = Task {
                do {
                    for try await data in await upstream.receive() {
                        do {
                            _ = try JSONCodec.parse(Array(data), maxDepth: 256)
                            cont.yield(data)
                        } catch {
                            let reply = JSONCodec.encode(.object([
                                "jsonrpc": "2.0", "id": .null,
                                "error": .object(["code": -32700, "message": .string("Parse error: \(error)")]),
                            ]))
                            try? await upstream.send(Data(reply.utf8))
                        }
                    }
                    cont.finish()
                } catch {
                    cont.finish(throwing: error)
                }
            }
            cont.onTermination = { _ in t.cancel() }
        }
    }
}

/// One MCP session: its sandbox (made once, on first use) and its tool calls,
/// which run concurrently (the actor only guards the session's state).
actor MCPSession {
    let client: any RPCClient
    let template: String
    let policy: String
    let maxOutput: Int
    /// The sandbox being made or made: every call that races the first one waits for the same task.
    var current: Task<String, Error>?
    /// Sandboxes this session made (its own and its forks): all deleted at the end.
    var made: [String] = []
    var ended = false

    init(client: any RPCClient, template: String, policy: String, maxOutput: Int) {
        self.client = client
        self.template = template
        self.policy = policy
        self.maxOutput = maxOutput
    }

    static func schema(_ props: [String: Value], required: [String]) -> Value {
        .object(["type": "object", "properties": .object(props), "required": .array(required.map { .string($0) })])
    }

    static let tools: [Tool] = [
        Tool(name: "run_code", description: "Run Python code in the session's sandbox. Variables, imports and functions persist between calls, like a notebook. The value of the last expression is returned, and matplotlib figures come back as images. Every call is checkpointed (see rollback).",
             inputSchema: schema(["code": .object(["type": "string", "description": "Python source to run"]),
                                  "timeout_seconds": .object(["type": "number", "description": "Interrupt the code after this long (default, or 0: no limit)"])], required: ["code"])),
        Tool(name: "run_command", description: "Run a shell command (bash) in the sandbox, as an unprivileged user with no network. Returns the exit code, stdout and stderr.",
             inputSchema: schema(["command": .object(["type": "string"]),
                                  "cwd": .object(["type": "string", "description": "Working directory (default, or empty: /home/user)"]),
                                  "timeout_seconds": .object(["type": "number", "description": "Kill the command after this long (default, or 0: no limit)"]),
                                  "yield_seconds": .object(["type": "number", "description": "Return after this long with the output so far if the command is still running (it keeps running, its stdin open: continue with write_stdin). Default, or 0: wait for it to end"]),
                                  "tty": .object(["type": "boolean", "description": "Run it on a terminal (for REPLs, prompts, editors); use with yield_seconds"])], required: ["command"])),
        Tool(name: "write_stdin", description: "Send input to a command started with run_command and yield_seconds (\\n ends a line; \\u0003 is Ctrl-C on a terminal), then return the output that followed, waiting up to yield_seconds. Empty input just waits for more output.",
             inputSchema: schema(["exec_id": .object(["type": "string", "description": "The exec id run_command gave"]),
                                  "input": .object(["type": "string", "description": "Text to send (may be empty)"]),
                                  "close_stdin": .object(["type": "boolean", "description": "Then close its stdin (end of input)"]),
                                  "yield_seconds": .object(["type": "number", "description": "How long to gather output (default 1)"])], required: ["exec_id"])),
        Tool(name: "read_file", description: "Read a text file from the sandbox (paths relative to /home/user or absolute).",
             inputSchema: schema(["path": .object(["type": "string"])], required: ["path"]), annotations: .init(readOnlyHint: true)),
        Tool(name: "write_file", description: "Write a text file in the sandbox, creating parent directories.",
             inputSchema: schema(["path": .object(["type": "string"]), "content": .object(["type": "string"])], required: ["path", "content"])),
        Tool(name: "list_files", description: "List a directory in the sandbox.",
             inputSchema: schema(["path": .object(["type": "string", "description": "Default /home/user"]),
                                  "recursive": .object(["type": "boolean"])], required: []), annotations: .init(readOnlyHint: true)),
        Tool(name: "list_checkpoints", description: "List the sandbox's checkpoints: one per step (each run_code or run_command), with what files changed.",
             inputSchema: schema([:], required: []), annotations: .init(readOnlyHint: true)),
        Tool(name: "rollback", description: "Roll the sandbox back to the checkpoint of a step: its files, and the Python variables of that step where the interpreter's copy is still kept. Running processes do not survive; the result says what was restored and what was lost.",
             inputSchema: schema(["step": .object(["type": "integer"])], required: ["step"]), annotations: .init(destructiveHint: true)),
        Tool(name: "fork", description: "Copy the sandbox as it was at a step (default: now) into a new sandbox and continue the session there; the original is kept until the session ends.",
             inputSchema: schema(["step": .object(["type": "integer", "description": "Step to fork from (default, or 0: the latest)"])], required: [])),
    ]

    func call(_ name: String, _ args: [String: Value]) async -> CallTool.Result {
        if ended { return Self.error("the session has ended") }
        do {
            switch name {
            case "run_code": return try await runCode(args)
            case "run_command": return try await runCommand(args)
            case "write_stdin": return try await writeStdin(args)
            case "read_file":
                let r = try await rpc("fs.read", ["path": .string(try Self.string(args, "path"))])
                let bytes = Base64.decode(r["data"]?.stringValue ?? "") ?? []
                guard let text = String(validating: bytes, as: UTF8.self) else {
                    return Self.error("\(args["path"]?.stringValue ?? "") is binary (\(r["size"]?.intValue ?? 0) bytes); read it with run_code instead")
                }
                let more = r["eof"] == false ? "\n… [file continues: \(r["size"]?.intValue ?? 0) bytes in all]" : ""
                return Self.text(shape(text, label: "file") + more)
            case "write_file":
                let path = try Self.string(args, "path")
                let r = try await rpc("fs.write", ["path": .string(path), "text": .string(try Self.string(args, "content"))])
                // A file write is not a step; checkpoint it so a later rollback to this point has the file.
                let ck = try? await rpc("checkpoint.create", ["name": .string("write_file \(path)")])
                return Self.text("wrote \(r["size"]?.intValue ?? 0) bytes to \(path)" + (ck?["step"]?.intValue.map { " (checkpointed at step \($0))" } ?? ""))
            case "list_files":
                var p: JSONObject = ["path": .string(Self.given(args["path"])?.stringValue ?? "/home/user"), "limit": 500]
                if args["recursive"]?.boolValue == true { p["recursive"] = true }
                let r = try await rpc("fs.list", p)
                let lines = (r["entries"]?.arrayValue ?? []).map { e -> String in
                    let kind = e["type"]?.stringValue ?? "?"
                    return (kind == "dir" ? "d " : kind == "symlink" ? "l " : "- ") + (e["path"]?.stringValue ?? "")
                        + (kind == "file" ? "  (\(e["size"]?.intValue ?? 0) bytes)" : "")
                }
                let more = r["nextCursor"] != nil ? "\n… [more entries not shown]" : ""
                return Self.text(lines.isEmpty ? "(empty)" : lines.joined(separator: "\n") + more)
            case "list_checkpoints":
                let r = try await rpc("checkpoint.list", [:])
                let lines = (r["checkpoints"]?.arrayValue ?? []).map { c -> String in
                    let d = c["diff"]
                    return "step \(c["step"]?.intValue ?? 0): +\(d?["added"]?.intValue ?? 0) ~\(d?["modified"]?.intValue ?? 0) -\(d?["deleted"]?.intValue ?? 0) files"
                        + (c["name"]?.stringValue.map { " (\($0))" } ?? "")
                }
                return Self.text(lines.isEmpty ? "no checkpoints yet: every run_code and run_command makes one" : lines.joined(separator: "\n"))
            case "rollback":
                guard let step = args["step"]?.intValue else { return Self.error("rollback needs an integer step") }
                let r = try await rpc("sandbox.restore", ["step": .int(Int64(step))])
                return Self.text(Self.describeRestore(step: Int64(step), r))
            case "fork":
                var p: JSONObject = ["deleteOnDisconnect": true]
                let step = Self.given(args["step"])?.intValue
                if let s = step { p["step"] = .int(Int64(s)) }
                let from = try await sandbox()
                let r = try await rpc("sandbox.fork", p)
                guard let id = r["sandboxes"]?.arrayValue?.first?["sandboxId"]?.stringValue else { return Self.error("the fork made no sandbox") }
                made.append(id)
                current = Task { id }
                return Self.text("now working in a fork (\(id)) of \(from)" + (step.map { " at step \($0)" } ?? "") + ". Files come with it; Python variables do not.")
            default:
                throw MCPError.invalidParams("Unknown tool: \(name)")
            }
        } catch let e as SandpitError {
            return Self.error("\(e.message) [\(e.code.rawValue)]")
        } catch let e as MCPError {
            return Self.error("\(e)")
        } catch {
            return Self.error("\(error)")
        }
    }

    func runCode(_ args: [String: Value]) async throws -> CallTool.Result {
        var p: JSONObject = ["code": .string(try Self.string(args, "code"))]
        if let t = Self.seconds(args["timeout_seconds"]) { p["timeoutMs"] = .int(t) }
        let (r, out, err) = try await rpcCollecting("code.run", p, notification: "code.output", onCancel: { [client] sb, _ in
            // The client gave up on the cell: stop it, so the next one does not queue behind it.
            _ = try? await client.call("code.interrupt", ["sandboxId": .string(sb)])
        })
        var parts: [String] = []
        if r["restarted"] == true { parts.append("(the Python interpreter was restarted: earlier variables are gone)") }
        if !out.isEmpty { parts.append(shape(out, label: "stdout")) }
        if !err.isEmpty { parts.append("stderr:\n" + shape(err, label: "stderr")) }
        var content: [Tool.Content] = []
        for b in r["results"]?.arrayValue ?? [] {
            if let png = b["image/png"]?.stringValue {
                content.append(.image(data: png, mimeType: "image/png", annotations: nil, _meta: nil))
            } else {
                // Every textual form the object gave: a repr alone often says
                // nothing (`<… object at 0x…>`) where its HTML or Markdown does.
                let texts = ["text/plain", "text/markdown", "text/html", "image/svg+xml", "text/latex"].compactMap { m in b[m]?.stringValue.map { (m, $0) } }
                for (i, (mime, t)) in texts.enumerated() { parts.append((i == 0 ? "" : mime + ":\n") + shape(t, label: "result")) }
                if texts.isEmpty, let j = b["application/json"], j != .null { parts.append(shape(JSONCodec.encode(j), label: "result")) }
            }
        }
        if r["timedOut"] == true { parts.append("(interrupted: the code ran past its time limit)") }
        if let e = r["error"], e != .null {
            parts.append((e["traceback"]?.stringValue).map { shape($0, label: "traceback") } ?? "\(e["name"]?.stringValue ?? "Error"): \(e["value"]?.stringValue ?? "")")
            return .init(content: [.text(text: parts.joined(separator: "\n"), annotations: nil, _meta: nil)] + content, isError: true)
        }
        if parts.isEmpty && content.isEmpty { parts.append("(no output)") }
        return .init(content: (parts.isEmpty ? [] : [.text(text: parts.joined(separator: "\n"), annotations: nil, _meta: nil)]) + content, isError: false)
    }

    /// Where each yielding command's next output starts.
    var nextSeq: [String: Int64] = [:]

    /// What a yield-style answer says: the output so far, and either how it
    /// ended or how to go on.
    func yielded(_ r: JSONValue) -> CallTool.Result {
        let exec = r["execId"]?.stringValue ?? ""
        nextSeq[exec] = r["nextSeq"]?.intValue ?? 0
        var out: [UInt8] = [], err: [UInt8] = []
        for c in r["chunks"]?.arrayValue ?? [] where c["stream"]?.stringValue != "stdin" {
            if c["stream"]?.stringValue == "stderr" { err += outputBytes(c) } else { out += outputBytes(c) }
        }
        let o = String(decoding: out, as: UTF8.self), e = String(decoding: err, as: UTF8.self)
        var text: String
        if r["running"] == true {
            text = "still running (exec_id \(exec)): send input or wait for more with write_stdin"
        } else {
            nextSeq[exec] = nil
            text = r["timedOut"] == true ? "timed out (killed)" : "exit code \(r["exitCode"]?.intValue ?? -1)"
        }
        if let n = r["omittedBytes"]?.intValue { text += "\n(\(n) bytes of output left out of the middle)" }
        text += "\noutput:\n" + (o.isEmpty ? "(none yet)" : shape(o, label: "output"))
        if !e.isEmpty { text += "\nstderr:\n" + shape(e, label: "stderr") }
        return .init(content: [.text(text: text, annotations: nil, _meta: nil)], isError: r["running"] != true && r["exitCode"]?.intValue != 0)
    }

    func writeStdin(_ args: [String: Value]) async throws -> CallTool.Result {
        let exec = try Self.string(args, "exec_id")
        let input = args["input"]?.stringValue ?? ""
        let close = args["close_stdin"]?.boolValue == true
        // One request: the input and the end of it, so a command that ends on the input races nothing.
        if !input.isEmpty || close {
            var p: JSONObject = ["execId": .string(exec)]
            if !input.isEmpty { p["data"] = .string(input) }
            if close { p["eof"] = true }
            _ = try await rpc("exec.input", p)
        }
        let wait = Self.seconds(args["yield_seconds"]) ?? 1000
        let r = try await rpc("exec.wait", ["execId": .string(exec), "yieldMs": .int(wait), "sinceSeq": .int(nextSeq[exec] ?? 0),
                                            "maxOutputBytes": .int(Int64(maxOutput))])
        return yielded(r)
    }

    func runCommand(_ args: [String: Value]) async throws -> CallTool.Result {
        var p: JSONObject = ["shell": .string(try Self.string(args, "command"))]
        if let c = Self.given(args["cwd"])?.stringValue { p["cwd"] = .string(c) }
        if let t = Self.seconds(args["timeout_seconds"]) { p["timeoutMs"] = .int(t) }
        if let y = Self.seconds(args["yield_seconds"]) {
            // An interactive command over several tool calls: stdin stays open, output comes in slices.
            p["yieldMs"] = .int(y)
            p["stdin"] = "pipe"
            p["maxOutputBytes"] = .int(Int64(maxOutput))
            if Self.given(args["tty"])?.boolValue == true { p["pty"] = ["rows": 24, "cols": 120] }
            return yielded(try await rpc("exec.run", p))
        }
        let (r, out, err) = try await rpcCollecting("exec.run", p, notification: "exec.output", onCancel: { [client] sb, exec in
            // The client gave up on the command: kill it rather than leave it running unseen.
            if let exec { _ = try? await client.call("exec.kill", ["sandboxId": .string(sb), "execId": .string(exec)]) }
        })
        let code = r["exitCode"]?.intValue ?? -1
        var text = r["timedOut"] == true ? "timed out (killed)" : "exit code \(code)"
        if r["oomKilled"] == true { text += " (killed: out of memory)" }
        text += "\nstdout:\n" + (out.isEmpty ? "(empty)" : shape(out, label: "stdout"))
        if !err.isEmpty { text += "\nstderr:\n" + shape(err, label: "stderr") }
        return .init(content: [.text(text: text, annotations: nil, _meta: nil)], isError: code != 0 || r["timedOut"] == true)
    }

    /// Keeps the head and tail of long output and says what was cut.
    func shape(_ s: String, label: String) -> String {
        guard s.count > maxOutput else { return s }
        let half = maxOutput / 2
        let head = s.prefix(half), tail = s.suffix(half)
        let cut = s.dropFirst(half).dropLast(half)
        let lines = cut.reduce(0) { $0 + ($1 == "\n" ? 1 : 0) }
        return head + "\n… [\(label): \(cut.count) characters (\(lines) lines) cut from the middle] …\n" + tail
    }

    /// The session's sandbox, made on first use: calls that race the first
    /// one wait for the same creation. A failed creation is tried again by
    /// the next call. Through a daemon the sandbox is tied to this process's
    /// connection, so it goes when the process goes, however it ends.
    func sandbox() async throws -> String {
        if ended { throw SandpitError(.unavailable, "the session has ended") }
        if let t = current { return try await t.value }
        let (client, template, policy) = (client, template, policy)
        let t = Task<String, Error> {
            let r = try await client.call("sandbox.create", ["template": .string(template), "policy": .string(policy),
                                                             "metadata": ["client": "mcp"], "deleteOnDisconnect": true])
            guard let id = r["sandboxId"]?.stringValue else { throw SandpitError(.internal, "sandbox.create returned no id") }
            return id
        }
        current = t
        do {
            let id = try await t.value
            if !made.contains(id) { made.append(id) }
            return id
        } catch {
            if current == t { current = nil }
            throw error
        }
    }

    func rpc(_ method: String, _ params: JSONObject) async throws -> JSONValue {
        var p = params
        p["sandboxId"] = .string(try await sandbox())
        return try await client.call(method, p)
    }

    /// A call whose output notifications are gathered per stream. When the
    /// MCP client cancels the call, `onCancel` gets the sandbox and the exec
    /// (once its output named it) to stop what runs there.
    func rpcCollecting(_ method: String, _ params: JSONObject, notification: String,
                       onCancel: @escaping @Sendable (String, String?) async -> Void) async throws -> (JSONValue, String, String) {
        var p = params
        let sb = try await sandbox()
        p["sandboxId"] = .string(sb)
        let streams = OutputCollector()
        do {
            let r = try await client.call(method, p) { m, n in
                guard m == notification else { return }
                streams.add(n["stream"]?.stringValue == "stderr", outputBytes(n), exec: n["execId"]?.stringValue)
            }
            let (out, err) = streams.texts()
            return (r, out, err)
        } catch is CancellationError {
            let exec = streams.exec
            await Task.detached { await onCancel(sb, exec) }.value
            throw CancellationError()
        }
    }

    func end() async {
        ended = true
        if let t = current { _ = try? await t.value }
        for id in made { _ = try? await client.call("sandbox.delete", ["sandboxId": .string(id)]) }
        made = []
        await client.close()
    }

    /// A rollback's result in words: what came back, and what did not.
    static func describeRestore(step: Int64, _ r: JSONValue) -> String {
        let restored = (r["restored"]?.arrayValue ?? []).compactMap(\.stringValue)
        let lost = (r["lost"]?.arrayValue ?? []).compactMap(\.stringValue)
        func words(_ parts: [String]) -> String {
            parts.map { $0 == "filesystem" ? "files" : $0 == "interpreter" ? "Python variables" : $0 }.joined(separator: ", ")
        }
        var s = "rolled back to step \(step): restored " + (restored.isEmpty ? "nothing" : words(restored))
        if !lost.isEmpty { s += "; lost: " + words(lost) }
        if !restored.contains("interpreter") && lost.contains("interpreter") { s += " (Python variables start fresh)" }
        return s
    }

    /// An optional argument, or nil when it was not given: strict-schema
    /// clients fill every field, so null, 0, "" and false mean "not given".
    static func given(_ v: Value?) -> Value? {
        switch v {
        case nil, .null?: return nil
        case .string(let s)? where s.isEmpty: return nil
        case .int(0)?: return nil
        case .double(let d)? where d == 0: return nil
        case .bool(false)?: return nil
        default: return v
        }
    }

    static func string(_ args: [String: Value], _ key: String) throws -> String {
        guard let s = args[key]?.stringValue else { throw SandpitError.invalidParams(key, "required: a string") }
        return s
    }

    static func seconds(_ v: Value?) -> Int64? {
        guard let v = given(v) else { return nil }
        let s = v.doubleValue ?? v.intValue.map(Double.init)
        return s.map { Int64(max(1, ($0 * 1000).rounded())) }
    }

    static func text(_ s: String) -> CallTool.Result { .init(content: [.text(text: s, annotations: nil, _meta: nil)], isError: false) }
    static func error(_ s: String) -> CallTool.Result { .init(content: [.text(text: s, annotations: nil, _meta: nil)], isError: true) }
}

/// Output bytes of one call, per stream (notifications arrive on another task).
final class OutputCollector: Sendable {
    private let streams = Mutex<(out: [UInt8], err: [UInt8], exec: String?)>(([], [], nil))
    func add(_ stderr: Bool, _ b: [UInt8], exec: String?) {
        streams.withLock {
            if stderr { $0.err += b } else { $0.out += b }
            if $0.exec == nil { $0.exec = exec }
        }
    }
    var exec: String? { streams.withLock { $0.exec } }
    func texts() -> (String, String) { streams.withLock { (String(decoding: $0.out, as: UTF8.self), String(decoding: $0.err, as: UTF8.self)) } }
}
