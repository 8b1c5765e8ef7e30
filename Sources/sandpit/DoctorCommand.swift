#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Logging
import SandpitCore
import SandpitDaemon
import SandpitEngine
import SandpitOS

/// `sandpit doctor`: what this host gives sandboxes, and whether one can be
/// made here at all (it makes one, on a scratch data dir, and removes it).
struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check this host: the kernel, each facility Sandpit uses and what it does without it, cgroups, and whether a sandbox can be made here.",
        discussion: "Exits 1 when no sandbox can be made (the daemon would refuse to start or every create would fail), 0 otherwise. SANDPIT_DISABLE=name,... forces fallbacks, as for the daemon.")

    @Flag(help: "Print the report as JSON.")
    var json = false

    func run() async throws {
        var report: JSONObject = ["kernel": .string(KernelFeatures.release)]
        var lines: [String] = ["kernel            \(KernelFeatures.release)"]
        var fatal: [String] = []
        if geteuid() != 0 && !Rootless.active {
            // As a user: the checks run again in rootless mode, as the daemon would.
            do { try RootlessEntry.ifNeeded() } catch { fatal.append("not root, and rootless mode is not possible: \(error)") }
        }
        report["rootless"] = .bool(Rootless.active)
        if Rootless.active {
            lines.append("mode              rootless: root of a user namespace over your subordinate ids (no loop devices: disks are directories without a size limit; cgroup limits only in a delegated v2 subtree)")
        }
        var checks: JSONObject = [:]
        for c in KernelFeatures.checks() {
            checks[c.name] = .object(["ok": .bool(c.ok), "detail": .string(c.detail)])
            lines.append((c.ok ? "ok    " : (c.required ? "FAIL  " : "no    ")) + c.name + ": " + c.detail)
            if !c.ok && c.required { fatal.append(c.name + ": " + c.detail) }
        }
        report["checks"] = .object(checks)
        if fatal.isEmpty {
            // The proof: a real sandbox on a scratch data dir, one command, then nothing left.
            var template = Array("/tmp/sandpit-doctor-XXXXXX".utf8CString)
            let dir = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) } ?? "/tmp/sandpit-doctor"
            var logger = Logger(label: "sandpit-doctor")
            logger.logLevel = .error
            let exe = Executable.directory()
            let cfg = EngineConfig(dataDir: dir + "/data", storageMode: .loop, storageBytes: 2 << 30,
                                   agentPath: ProcessEnv.get("SANDPIT_AGENT") ?? Executable.findAgent(in: exe),
                                   policiesDir: Executable.findPolicies(), warmPool: 0)
            do {
                let engine = try Engine(config: cfg, logger: logger)
                let service = RPCService(engine: engine, logger: logger)
                let client = InProcessClient(service: service)
                let t0 = Clock.monotonicNs()
                let sb = try await client.call("sandbox.create", [:])["sandboxId"]?.stringValue ?? ""
                let r = try await client.call("exec.run", ["sandboxId": .string(sb), "cmd": ["true"]])
                let ms = Double(Clock.monotonicNs() - t0) / 1e6
                _ = try? await client.call("sandbox.delete", ["sandboxId": .string(sb)])
                report["host"] = engine.hostReport
                await client.close()
                if r["exitCode"] == 0 {
                    lines.append("ok    a sandbox: created and ran a command in \(String(format: "%.0f", ms)) ms (cold, first on this host)")
                } else {
                    fatal.append("a sandbox was made but `true` exited \(r["exitCode"].map { "\($0)" } ?? "?")")
                }
                if case .object(let h)? = report["host"], case .object(let cg)? = h["cgroup"] {
                    let ctl = cg["controllers"]?.arrayValue?.compactMap(\.stringValue) ?? []
                    lines.append("cgroup            \(cg["version"]?.stringValue ?? "?"): " + (ctl.isEmpty ? "no controllers: no memory, pids or cpu limits" : ctl.joined(separator: ", ")))
                    let enforced = h["limitsEnforced"]?.arrayValue?.compactMap(\.stringValue) ?? []
                    lines.append("limits enforced   " + enforced.joined(separator: ", "))
                    if case .object(let f)? = h["features"] {
                        for k in ["per-sandbox /usr overlay", "idmapped /usr", "reflink store"] {
                            if let o = f[k] { lines.append((o["ok"] == true ? "ok    " : "no    ") + k + ": " + (o["detail"]?.stringValue ?? "")) }
                        }
                    }
                }
            } catch {
                fatal.append("no sandbox could be made here: \(error)")
            }
            if MountTable.mountPoints().contains(dir + "/data/store") { _ = try? HostCommand.run(["umount", "-l", dir + "/data/store"]) }
            try? FS.removeTree(dir)
        }
        report["ok"] = .bool(fatal.isEmpty)
        report["problems"] = .array(fatal.map { .string($0) })
        if json {
            print(JSONCodec.encode(.object(report)))
        } else {
            for l in lines { print(l) }
            print(fatal.isEmpty ? "\nSandboxes work on this host." : "\nSandboxes cannot be made on this host:\n" + fatal.map { "  - " + $0 }.joined(separator: "\n"))
        }
        if !fatal.isEmpty { throw ExitCode(1) }
    }
}
