#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SandpitCore
import SandpitTestSupport

/// Template builds over the real protocol: the fixture specs, the build
/// cache, sandboxes from templates, dependents, collection and crashes.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct TemplateTests {
    struct Build {
        var result: JSONValue?
        var error: JSONValue?
        var progress: [JSONValue]
        /// The `cached` flag of every step that made (or reused) a layer, by step number.
        var cached: [Int: Bool] {
            var out: [Int: Bool] = [:]
            for p in progress { if let c = p["cached"]?.boolValue, let s = p["step"]?.intValue { out[Int(s)] = c } }
            return out
        }
        var output: String {
            progress.compactMap { $0["data"]?.stringValue }.joined()
        }
    }

    func build(_ c: LineConnection, _ params: JSONObject) throws -> Build {
        c.notifications = []
        let r = try c.call("template.build", .object(params), timeout: 300)
        let progress = c.notifications.compactMap { $0["method"] == "template.progress" ? $0["params"] : nil }
        c.notifications = []
        return Build(result: r["result"], error: r["error"], progress: progress)
    }

    func run(_ c: LineConnection, _ sb: String, _ argv: [String]) throws -> (code: Int64?, out: String, err: String) {
        c.notifications = []
        let r = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": .array(argv.map { .string($0) })])
        let notes = c.notifications.compactMap { $0["method"] == "exec.output" ? $0["params"] : nil }
        c.notifications = []
        func text(_ s: String) -> String { notes.filter { $0["stream"] == .string(s) }.compactMap { $0["data"]?.stringValue }.joined() }
        return (r["exitCode"]?.intValue, text("stdout"), text("stderr"))
    }

    func sandbox(_ c: LineConnection, _ template: String) throws -> String {
        try c.result("sandbox.create", ["template": .string(template)])["sandboxId"]!.stringValue!
    }

    func layerDirs(_ d: DaemonProcess) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: d.dataDir + "/store/layers")) ?? []).sorted()
    }

    @Test func rebuildHitsTheCacheAndAnEditRebuildsFromThatLine() throws {
        try withDaemon { d in
            let c = try d.connect()
            let spec = TestEnv.fixturesDir + "/templates/tools/Dockerfile"
            let first = try build(c, ["name": "tools", "file": .string(spec)])
            #expect(first.error == nil, "\(String(describing: first.error))")
            let t = try #require(first.result)
            #expect(t["name"] == "tools" && t["tag"] == "latest")
            #expect(t["layers"]?.arrayValue?.count == 3, "RUN, WORKDIR and RUN make layers; ENV and USER do not")
            // Progress: every step announced in order, with the total.
            let steps = first.progress.filter { $0["data"] == nil && ($0["message"]?.stringValue?.hasPrefix(" ") == false) }
            #expect(steps.compactMap { $0["step"]?.intValue }.prefix(7) == [1, 2, 3, 4, 5, 6, 7])
            #expect(first.progress.allSatisfy { $0["total"] == 7 && $0["requestId"] != nil })
            #expect(first.cached == [3: false, 6: false, 7: false])

            let again = try build(c, ["name": "tools", "file": .string(spec)])
            #expect(again.cached == [3: true, 6: true, 7: true], "an unchanged spec reuses every layer")
            #expect(again.result?["templateId"] == t["templateId"])

            // Edit the last line: the steps before it come from the cache.
            let ctx = try TestEnv.scratch("edit")
            defer { try? FileManager.default.removeItem(atPath: ctx) }
            let text = try String(contentsOfFile: spec, encoding: .utf8).replacingOccurrences(of: "echo \"# $PROJECT\"", with: "echo \"## $PROJECT edited\"")
            try text.write(toFile: ctx + "/Dockerfile", atomically: true, encoding: .utf8)
            let edited = try build(c, ["name": "tools", "tag": "v2", "file": .string(ctx + "/Dockerfile")])
            #expect(edited.cached == [3: true, 6: true, 7: false])
            #expect(edited.result?["templateId"] != t["templateId"])

            let list = try c.result("template.list")["templates"]!.arrayValue!.map { "\($0["name"]!.stringValue!):\($0["tag"]!.stringValue!)" }
            #expect(list == ["default:latest", "tools:latest", "tools:v2"])
            let got = try c.result("template.get", ["name": "tools:v2"])
            #expect(got["layers"]?.arrayValue?.last?["createdBy"]?.stringValue?.contains("edited") == true)

            // Sandboxes get the template's files and its ENV, WORKDIR and USER.
            let sb = try sandbox(c, "tools:v2")
            #expect(try c.result("sandbox.get", ["sandboxId": .string(sb)])["template"] == "tools:v2")
            let r = try run(c, sb, ["sh", "-c", "pwd; id -un; cat README.md; hello there; echo $PROJECT"])
            #expect(r.out == "/home/user/project\nuser\n## demo edited\nhello from there\ndemo\n", "\(r.err)")
            // The template's layers are read-only underneath: writes land in the sandbox's own layer.
            let w = try run(c, sb, ["sh", "-c", "echo mine > README.md; rm /opt/tools/hello 2>&1; ls /opt/tools | wc -l"])
            #expect(w.code == 0)
            let other = try sandbox(c, "tools:v2")
            #expect(try run(c, other, ["cat", "README.md"]).out == "## demo edited\n", "another sandbox of the template is untouched")
        }
    }

    @Test func pipFixtureInstallsAPackage() throws {
        try withDaemon { d in
            let c = try d.connect()
            let b = try build(c, ["name": "pip", "file": .string(TestEnv.fixturesDir + "/templates/pip/Dockerfile")])
            #expect(b.error == nil, "\(String(describing: b.error)) \(b.output)")
            let sb = try sandbox(c, "pip")
            let r = try run(c, sb, ["python3", "-c", "import greet, sys, os; print(greet.hello('sandpit'), sys.prefix, os.getuid())"])
            #expect(r.out == "hello, sandpit /opt/venv 1000\n", "\(r.err)")
        }
    }

    /// Makes the mini rootfs tarball (the fixture's script) in a fresh context dir.
    func rootfsContext(padMB: Int = 0) throws -> String {
        let ctx = try TestEnv.scratch("rootfs")
        let fx = TestEnv.fixturesDir + "/templates/rootfs"
        let made = Host.sh("sh '\(fx)/make-rootfs.sh' '\(ctx)/mini-rootfs.tar.gz'" + (padMB > 0 ? " --pad-mb \(padMB)" : "") + " && cp '\(fx)/Dockerfile' '\(ctx)/'")
        #expect(made.status == 0, "\(made.output)")
        return ctx
    }

    @Test func rootfsTarballTemplateRunsWithoutHostFilesAndStaysIsolated() throws {
        let ctx = try rootfsContext()
        defer { try? FileManager.default.removeItem(atPath: ctx) }
        try withDaemon { d in
            let c = try d.connect()
            let b = try build(c, ["name": "mini", "file": .string(ctx + "/Dockerfile")])
            #expect(b.error == nil, "\(String(describing: b.error))")
            let sb = try sandbox(c, "mini")
            let r = try run(c, sb, ["/bin/sh", "-c", "id -u; pwd; cat /etc/motd; read l < /etc/os-release; echo $l; cat notes.txt; ls /usr 2>&1 || true"])
            #expect(r.out.hasPrefix("1000\n/home/user\nbuilt from a tarball\nID=sandpit-mini\na file from the template\n"), "\(r.out) \(r.err)")
            #expect(r.out.contains("No such file"), "no host /usr in a rootfs template: \(r.out)")
            // The same posture as any sandbox.
            let status = try run(c, sb, ["/bin/cat", "/proc/self/status"]).out
            #expect(status.contains("NoNewPrivs:\t1"))
            #expect(status.contains("CapEff:\t0000000000000000"))
            #expect(status.contains("Seccomp:\t2"))
            // Checkpoints work on it like on any sandbox.
            c.notifications = []
            let step = try c.result("exec.run", ["sandboxId": .string(sb), "cmd": ["/bin/sh", "-c", "echo x > /home/user/new; rm /home/user/notes.txt"]])
            #expect(step["checkpoint"]?["diff"]?["added"] == 1)
            #expect(step["checkpoint"]?["diff"]?["deleted"] == 1, "deleting a template file is a deletion")

            // zstd works too (GNU tar tells compressions apart by content).
            if Host.sh("command -v zstd").status == 0 {
                #expect(Host.sh("gzip -dc '\(ctx)/mini-rootfs.tar.gz' | zstd -q -o '\(ctx)/mini.tar.zst'").status == 0)
                let z = try build(c, ["name": "mini-zst", "spec": "FROM ./mini.tar.zst\n", "context": .string(ctx)])
                #expect(z.error == nil, "\(String(describing: z.error))")
                let zs = try sandbox(c, "mini-zst")
                #expect(try run(c, zs, ["/bin/cat", "/etc/os-release"]).out.hasPrefix("ID=sandpit-mini"))
            }
        }
    }

    /// An OCI image layout the test writes itself: two layers, the second
    /// deleting a file (whiteout) and replacing a directory (opaque).
    func ociLayout(in ctx: String) throws -> String {
        let dir = ctx + "/image"
        let script = """
            set -e
            cd '\(ctx)'
            mkdir -p l1 l2/etc l2/data image/blobs/sha256
            tar -xzf mini-rootfs.tar.gz -C l1
            mkdir -p l1/data l1/keep && echo a > l1/data/a && echo b > l1/data/b && echo x > l1/keep/x && echo old > l1/etc/motd
            : > l2/etc/.wh.motd
            : > l2/data/.wh..wh..opq
            echo c > l2/data/c
            tar -czf layer1.tgz --numeric-owner -C l1 .
            tar -cf layer2.tar --numeric-owner -C l2 .
            blob() { h=$(sha256sum "$1" | cut -c1-64); cp "$1" image/blobs/sha256/$h; echo $h; }
            L1=$(blob layer1.tgz); L2=$(blob layer2.tar)
            printf '{"architecture":"amd64","os":"linux","config":{"Env":["GREETING=hi from oci","PATH=/bin"],"WorkingDir":"/data"}}' > config.json
            C=$(blob config.json)
            printf '{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s"},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s"}]}' $C $L1 $L2 > manifest.json
            M=$(blob manifest.json)
            printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s"}]}' $M > image/index.json
            printf '{"imageLayoutVersion":"1.0.0"}' > image/oci-layout
            tar -cf image.tar -C image .
            """
        let r = Host.sh(script)
        #expect(r.status == 0, "\(r.output)")
        return dir
    }

    @Test func ociLayoutAndArchiveApplyLayersInOrderWithWhiteouts() throws {
        let ctx = try rootfsContext()
        defer { try? FileManager.default.removeItem(atPath: ctx) }
        _ = try ociLayout(in: ctx)
        try withDaemon { d in
            let c = try d.connect()
            let b = try build(c, ["name": "oci", "spec": "FROM ./image\nUSER root\nRUN echo $GREETING > /data/greeting\nUSER user\n", "context": .string(ctx)])
            #expect(b.error == nil, "\(String(describing: b.error))")
            let sb = try sandbox(c, "oci")
            let r = try run(c, sb, ["/bin/sh", "-c", "pwd; ls /data; cat /data/greeting; cat /keep/x; ls /etc/motd 2>&1 || true"])
            #expect(r.out.hasPrefix("/data\nc\ngreeting\nhi from oci\nx\n"), "opaque /data hides a and b; the whiteout deletes motd: \(r.out) \(r.err)")
            #expect(r.out.contains("No such file"))
            // The same image as a tar archive: its layers come from the cache (keyed by layer digest).
            let a = try build(c, ["name": "oci-archive", "spec": "FROM ./image.tar\n", "context": .string(ctx)])
            #expect(a.error == nil, "\(String(describing: a.error))")
            #expect(a.cached[1] == true)
            #expect(a.result?["layers"]?.arrayValue?.count == 2)
        }
    }

    @Test func deleteIsRefusedWhileInUseAndCollectsLayers() throws {
        try withDaemon { d in
            let c = try d.connect()
            let before = layerDirs(d)
            let spec = "FROM default\nUSER root\nRUN mkdir /opt/base && echo base > /opt/base/f\nUSER user\n"
            #expect(try build(c, ["name": "base", "spec": .string(spec)]).error == nil)
            #expect(try build(c, ["name": "child", "spec": "FROM base\nRUN echo child > /home/user/c\n"]).error == nil)
            let sb = try sandbox(c, "base")
            var e = try c.call("template.delete", ["name": "base"])["error"]
            #expect(e?["data"]?["code"] == "conflict")
            #expect(e?["data"]?["sandboxes"] == [.string(sb)])
            #expect(e?["data"]?["templates"] == ["child:latest"])
            // The child sees its parent's files and its own.
            let cs = try sandbox(c, "child")
            #expect(try run(c, cs, ["sh", "-c", "cat /opt/base/f /home/user/c"]).out == "base\nchild\n")
            _ = try c.result("sandbox.delete", ["sandboxId": .string(cs)])
            _ = try c.result("template.delete", ["name": "child"])
            e = try c.call("template.delete", ["name": "base"])["error"]
            #expect(e?["data"]?["code"] == "conflict", "the sandbox still uses it")
            // Forced: the tag goes; the sandbox keeps running on the layers.
            _ = try c.result("template.delete", ["name": "base", "force": true])
            #expect(try c.call("template.get", ["name": "base"])["error"]?["data"]?["code"] == "not_found")
            #expect(try run(c, sb, ["cat", "/opt/base/f"]).out == "base\n")
            #expect(layerDirs(d).count > before.count)
            // Deleting the last dependent frees every layer.
            _ = try c.result("sandbox.delete", ["sandboxId": .string(sb)])
            #expect(eventually { layerDirs(d) == before }, "layers left: \(layerDirs(d))")
            #expect(try c.call("sandbox.create", ["template": "base"])["error"]?["data"]?["code"] == "not_found")
        }
    }

    @Test func failingStepReportsItsOutputAndTheCLIShowsIt() throws {
        try withDaemon { d in
            let c = try d.connect()
            let b = try build(c, ["name": "broken", "spec": "FROM default\nENV X=1\nRUN echo about to fail; echo oops >&2; exit 3\n"])
            let e = try #require(b.error)
            #expect(e["data"]?["code"] == "build_failed")
            #expect(e["data"]?["step"] == 3 && e["data"]?["line"] == 3 && e["data"]?["exitCode"] == 3)
            #expect(e["data"]?["output"]?.stringValue?.contains("oops") == true)
            #expect(b.output.contains("about to fail"), "the step's output streamed as progress")
            #expect(try c.call("template.get", ["name": "broken"])["error"]?["data"]?["code"] == "not_found")
            // Bad specs are refused before anything runs, naming the line.
            let bad = try build(c, ["name": "bad", "spec": "FROM default\nEXPOSE 80\n"]).error
            #expect(bad?["data"]?["code"] == "invalid_params" && bad?["data"]?["line"] == 2)
            let user = try build(c, ["name": "bad", "spec": "FROM default\nUSER nosuchuser\n"]).error
            #expect(user?["data"]?["code"] == "build_failed")

            // The CLI prints docker-build-like progress and, on failure, the step's output.
            let ctx = try TestEnv.scratch("cli")
            defer { try? FileManager.default.removeItem(atPath: ctx) }
            try "FROM default\nRUN echo cli-step-output; exit 7\n".write(toFile: ctx + "/Dockerfile", atomically: true, encoding: .utf8)
            let out = Host.sh("'\(TestEnv.sandpit)' template build --socket '\(d.socketPath!)' -f '\(ctx)/Dockerfile' -t cli 2>&1")
            #expect(out.status == 1)
            #expect(out.output.contains("Step 2/2 : RUN echo cli-step-output; exit 7"), "\(out.output)")
            #expect(out.output.contains("exited with code 7"), "\(out.output)")
            #expect(out.output.contains("--- output of the failing step"), "\(out.output)")
        }
    }

    @Test func killedMidBuildLeavesNoHalfLayer() throws {
        let scratch = try TestEnv.scratch("tcrash")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let data = scratch + "/data"
        let spec = "FROM default\nRUN echo one > /home/user/one\n"
        for point in ["template.layer-renamed", "template.before-tag"] {
            setenv("SANDPIT_CRASH_AT", point, 1)
            let first = try DaemonProcess(socket: true, name: "tcrash1", dataDir: data)
            unsetenv("SANDPIT_CRASH_AT")
            defer { first.cleanup() }
            let c = try first.connect()
            _ = try? c.call("template.build", ["name": "crash", "spec": .string(spec)], timeout: 60)
            #expect(eventually { !first.process.isRunning }, "the daemon reached \(point)")
            first.cleanup()
            let second = try DaemonProcess(socket: true, name: "tcrash2", dataDir: data)
            defer { second.cleanup() }
            let c2 = try second.connect()
            let layers = layerDirs(second)
            #expect(!layers.contains { $0.hasSuffix(".partial") }, "\(point): \(layers)")
            #expect(try c2.call("template.get", ["name": "crash"])["error"]?["data"]?["code"] == "not_found", "\(point): never half tagged")
            // No sandbox of the dead build is left listed or on disk.
            #expect(try c2.result("sandbox.list")["sandboxes"]?.arrayValue?.isEmpty == true)
            let b = try build(c2, ["name": "crash", "spec": .string(spec)])
            #expect(b.error == nil)
            if point == "template.before-tag" { #expect(b.cached[2] == true, "a finished layer survives as cache") }
            _ = try c2.result("template.delete", ["name": "crash"])
            second.cleanup()
        }
    }
}
