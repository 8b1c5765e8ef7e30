#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import SandpitClient
import SandpitCore
import SandpitProtocol

struct TemplateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "template", abstract: "Build, list and delete templates.",
                                                    subcommands: [Build.self, Pull.self, List.self, Show.self, Remove.self])

    struct Build: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a template from a spec (FROM, RUN, COPY, ENV, WORKDIR, USER), like docker build.",
            discussion: "COPY sources and relative FROM paths are read from the spec file's directory unless --context is given.")
        @Option(name: .shortAndLong, help: "The spec file (a Dockerfile subset).") var file: String
        @Option(name: .shortAndLong, help: "NAME[:TAG] to give the template (tag defaults to latest).") var tag: String
        @Option(help: "Build context directory (default: the spec file's directory).") var context: String?
        @Option(help: "Policy for RUN steps (a build policy).") var policy = "build"
        @Flag(help: "Print only the result as JSON.") var json = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            func absolute(_ p: String) -> String {
                if p.hasPrefix("/") { return p }
                var buf = [CChar](repeating: 0, count: 4096)
                return String(cString: getcwd(&buf, buf.count)) + "/" + p
            }
            var params: JSONObject = ["name": .string(tag), "file": .string(absolute(file)), "policy": .string(policy)]
            if let context { params["context"] = .string(absolute(context)) }
            try await TemplateCommand.build(params, client: client, json: json)
        }
    }

    struct Pull: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a template from a container image in a registry, like docker pull.",
            discussion: "REF is [REGISTRY/]NAME[:TAG][@sha256:DIGEST] (Docker Hub when no registry is named). "
                + "The template is named after the image's last path component and tag unless --tag is given. "
                + "Layers the store already has (from another image) are not downloaded again.")
        @Argument(help: "The image reference, e.g. python:3.12-slim or ghcr.io/org/image:1.") var ref: String
        @Option(name: .shortAndLong, help: "NAME[:TAG] to give the template.") var tag: String?
        @Flag(help: "Print only the result as JSON.") var json = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let image: ImageReference
            do { image = try ImageReference.parse(ref) } catch { throw ValidationError(error.message) }
            let named = image.templateName
            // An explicit registry, so a template that happens to share the image's name is not used instead.
            let from = ImageReference.isExplicit(ref) ? ref : image.description
            try await TemplateCommand.build(["name": .string(tag ?? named.name + ":" + named.tag), "spec": .string("FROM \(from)\n"), "policy": "build"],
                                            client: client, json: json)
        }
    }

    /// Calls template.build, printing its progress as docker build does.
    static func build(_ params: JSONObject, client: ClientOptions, json: Bool) async throws {
        let c = try await client.connect()
        let quiet = json
        let r: JSONValue
        do {
            r = try await c.call("template.build", params) { method, p in
                guard method == "template.progress", !quiet else { return }
                if let data = p["data"]?.stringValue {
                    let bytes = p["encoding"]?.stringValue == "base64" ? Base64.decode(data) ?? [] : Array(data.utf8)
                    Console.write(bytes, fd: p["stream"]?.stringValue == "stderr" ? 2 : 1)
                    return
                }
                if let layer = p["layer"]?.stringValue, let done = p["bytesDone"]?.intValue, let all = p["bytesTotal"]?.intValue {
                    // A layer download: one line per layer, redrawn on a terminal as docker pull does.
                    let name = String(layer.dropFirst(7).prefix(12))
                    if isatty(1) != 0 {
                        let width = 30, filled = all > 0 ? Int(min(done, all) * Int64(width) / all) : 0
                        let bar = String(repeating: "=", count: filled) + (filled < width ? ">" + String(repeating: " ", count: width - filled - 1) : "")
                        let end = done >= all && all > 0 ? "\n" : ""
                        Console.write(Array("\r\(name): [\(bar)] \(Console.size(done))/\(Console.size(all))\u{1B}[K\(end)".utf8), fd: 1)
                    } else if done == 0 || done >= all {
                        Console.write(Array("\(name): \(done == 0 ? "pulling \(Console.size(all))" : "pulled, digest verified")\n".utf8), fd: 1)
                    }
                    return
                }
                let step = p["step"]?.intValue ?? 0, total = p["total"]?.intValue ?? 0
                let msg = p["message"]?.stringValue ?? ""
                let line = msg.hasPrefix(" ") || msg.hasPrefix("Successfully") ? msg : "Step \(step)/\(total) : \(msg)"
                Console.write(Array((line + "\n").utf8), fd: 1)
            }
        } catch let e as SandpitError {
            await c.close()
            Console.write(Array("error: \(e.message)\n".utf8), fd: 2)
            if let out = e.details["output"]?.stringValue, !out.isEmpty {
                Console.write(Array("--- output of the failing step (last \(out.utf8.count) bytes) ---\n\(out)\n".utf8), fd: 2)
            }
            throw ExitCode(1)
        }
        await c.close()
        if json { print(JSONCodec.encode(r)); return }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List templates.")
        @Option(help: "Only this name.") var name: String?
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try await client.connect()
            var p: JSONObject = [:]
            if let name { p["name"] = .string(name) }
            let r = try await c.call("template.list", p)
            await c.close()
            let all = r["templates"]?.arrayValue ?? []
            if json { print(JSONCodec.encode(.array(all))); return }
            print("TEMPLATE".column(28) + "ID".column(28) + "LAYERS".column(7) + "SIZE")
            for t in all {
                let ref = (t["name"]?.stringValue ?? "") + ":" + (t["tag"]?.stringValue ?? "")
                let size = t["builtin"] == true ? "(host /usr)" : Console.size(t["bytes"]?.intValue ?? 0)
                print(ref.column(28) + (t["templateId"]?.stringValue ?? "").column(28) + String(t["layers"]?.arrayValue?.count ?? 0).column(7) + size)
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a template and its layers as JSON.")
        @Argument(help: "NAME[:TAG].") var name: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try await client.connect()
            let r = try await c.call("template.get", ["name": .string(name)])
            await c.close()
            print(JSONCodec.encode(r))
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm",
            abstract: "Delete a template tag; refused while sandboxes or templates depend on it unless --force.")
        @Argument(help: "NAME[:TAG].") var names: [String]
        @Flag(help: "Delete even if sandboxes or templates depend on it (their layers stay until they are gone).") var force = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try await client.connect()
            var failed = false
            for n in names {
                do {
                    _ = try await c.call("template.delete", ["name": .string(n), "force": .bool(force)])
                    print(n)
                } catch {
                    Console.write(Array("sandpit template rm \(n): \(error)\n".utf8), fd: 2)
                    failed = true
                }
            }
            await c.close()
            if failed { throw ExitCode(1) }
        }
    }
}

enum Console {
    static func write(_ bytes: [UInt8], fd: Int32) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n <= 0 { break }
            off += n
        }
    }

    static func size(_ b: Int64) -> String {
        if b < 1 << 20 { return "\(b >> 10) KiB" }
        if b < 1 << 30 { return "\(b >> 20) MiB" }
        return "\(Double(b * 10 >> 30) / 10) GiB"
    }
}
