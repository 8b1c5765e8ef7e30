import Foundation
import Testing
@testable import SandpitCore

@Suite struct PolicyTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let host = SandboxPlan.Host(cgroup: "v1", uidBase: 100_000, uidCount: 65_536, seccompArch: "x86_64", seccompRules: 57)

    static func shipped(_ name: String) throws -> Policy {
        let path = repo.appendingPathComponent("Policies/\(name).json").path
        return try Policy.decode(try JSONCodec.parse(String(contentsOfFile: path, encoding: .utf8)), source: path)
    }

    @Test func shippedPoliciesDecode() throws {
        let d = try Self.shipped("default"), s = try Self.shipped("strict"), b = try Self.shipped("build")
        #expect(d.purpose == .sandbox && s.purpose == .sandbox && b.purpose == .build)
        #expect(s.memoryBytes! < d.memoryBytes! && s.diskBytes! < d.diskBytes!)
        #expect(b.network == .allowlist && b.allow.contains("pypi.org:443"))
    }

    /// The compiled plan of the shipped default policy, compared with a golden
    /// file. Update Golden/default-plan.txt on purpose when the plan changes.
    @Test func defaultPlanMatchesGoldenFile() throws {
        let plan = SandboxPlan.compile(try Self.shipped("default"), host: Self.host)
        let golden = try String(contentsOfFile: Self.repo.appendingPathComponent("Tests/SandpitCoreTests/Golden/default-plan.txt").path, encoding: .utf8)
        #expect(plan.text + "\n" == golden)
        #expect(plan.steps.map(\.name).first == "namespaces" && plan.steps.map(\.name).contains("seccomp"))
    }

    @Test func planReflectsDisabledBarriersAndAllowlist() throws {
        var p = Policy(name: "x")
        p.seccomp = false
        p.cgroup = false
        p.network = .allowlist
        p.allow = ["pypi.org:443"]
        let plan = SandboxPlan.compile(p, host: Self.host)
        #expect(plan.steps.first { $0.name == "seccomp" }?.detail == "disabled by policy")
        #expect(plan.steps.contains { $0.name == "cgroup" && $0.detail.hasPrefix("disabled") })
        #expect(plan.proxyPort == 3128)
        #expect(plan.steps.first { $0.name == "network" }?.detail.contains("pypi.org:443") == true)
    }

    @Test func clientsMayTightenButNeverLoosen() throws {
        let strict = try Self.shipped("strict")
        let tighter = try strict.tightened(by: ["memoryBytes": .int(64 << 20), "pids": 16])
        #expect(tighter.memoryBytes == 64 << 20 && tighter.pids == 16 && tighter.diskBytes == strict.diskBytes)
        #expect(throws: SandpitError.self) { try strict.tightened(by: ["memoryBytes": .int(1 << 40)]) }
        do { _ = try strict.tightened(by: ["pids": 100_000]) } catch { #expect(error.code == .permissionDenied && error.details["field"] == "limits.pids") }
        do { _ = try strict.tightened(by: ["network": "allowlist"]) } catch { #expect(error.code == .permissionDenied) }
        do { _ = try strict.tightened(by: ["bogus": 1]) } catch { #expect(error.code == .invalidParams) }
        do { _ = try strict.tightened(by: ["pids": 1]) } catch { #expect(error.code == .invalidParams) }
        // A limit the policy leaves open accepts any value.
        var open = strict
        open.sandboxTimeoutMs = nil
        #expect(try open.tightened(by: ["sandboxTimeoutMs": .int(5000)]).sandboxTimeoutMs == 5000)
        // An allowlist may only shrink.
        let build = try Self.shipped("build")
        #expect(try build.tightened(by: ["allow": ["pypi.org:443"]]).allow == ["pypi.org:443"])
        #expect(throws: SandpitError.self) { try build.tightened(by: ["allow": ["evil.example:443"]]) }
        #expect(try build.tightened(by: ["network": "none"]).network == .none)
        // Frozen interpreter copies: fewer is tighter.
        let def = try Self.shipped("default")
        #expect(strict.interpreterSnapshots == 2 && build.interpreterSnapshots == 0 && def.interpreterSnapshots == 8)
        #expect(try strict.tightened(by: ["interpreterSnapshots": 0]).interpreterSnapshots == 0)
        do { _ = try strict.tightened(by: ["interpreterSnapshots": 3]); Issue.record("loosened") } catch {
            #expect(error.code == .permissionDenied && error.details["field"] == "limits.interpreterSnapshots")
        }
    }

    @Test func scratchDiskTurnsOffWhatWouldNeedFilesOnDisk() throws {
        var plan = SandboxPlan.compile(try Self.shipped("default"), host: Self.host)
        #expect(plan.policy.checkpoints == .everyStep && plan.idle.hibernateAfterMs != nil)
        plan.useScratchDisk()
        #expect(plan.scratchDisk)
        #expect(plan.policy.checkpoints == .off, "a tmpfs layer cannot be frozen and cloned")
        #expect(plan.idle.hibernateAfterMs == nil, "hibernating would throw its files away")
        #expect(plan.steps.first { $0.name == "disk" }?.detail.hasPrefix("scratch tmpfs") == true)
        // Without a disk of its own there is nothing to move to memory.
        var p = Policy(name: "x")
        p.diskBytes = nil
        var noDisk = SandboxPlan.compile(p, host: Self.host)
        noDisk.useScratchDisk()
        #expect(!noDisk.scratchDisk)
    }

    @Test func smallDisksGetProportionateInodes() {
        var p = Policy(name: "x")
        p.diskBytes = 16 << 20
        p.diskInodes = 262_144
        #expect(SandboxPlan.compile(p, host: Self.host).policy.diskInodes == 2048)
    }

    @Test func decodeNamesTheFileAndField() {
        for (doc, field) in [(["name": "p", "network": "host"] as JSONValue, "network"), (["name": "p", "network": "allowlist"], "allow"),
                             (["name": "p", "outputBytes": .null], "outputBytes"), (["name": "p", "seccomp": "yes"], "seccomp"),
                             (["name": "p", "allow": ["no-port"]], "allow[0]"), (["name": "p", "pids": 0], "pids"),
                             (["name": "p", "interpreterSnapshots": 65], "interpreterSnapshots"), (["name": "p", "interpreterSnapshots": -1], "interpreterSnapshots")] {
            do {
                _ = try Policy.decode(doc, source: "Policies/p.json")
                Issue.record("accepted \(doc)")
            } catch {
                #expect(error.details["field"] == .string(field))
                #expect(error.message.hasPrefix("Policies/p.json: "))
            }
        }
    }

    @Test func allowRulesMatchHostsAndPorts() {
        let exact = AllowRule("pypi.org:443")!, wild = AllowRule("*.pythonhosted.org:*")!
        #expect(exact.matches(host: "PyPI.org", port: 443))
        #expect(!exact.matches(host: "pypi.org", port: 80))
        #expect(!exact.matches(host: "evilpypi.org", port: 443))
        #expect(wild.matches(host: "files.pythonhosted.org", port: 8443))
        #expect(!wild.matches(host: "pythonhosted.org", port: 443))
        #expect(!wild.matches(host: "files.pythonhosted.org.evil.com", port: 443))
        for bad in ["pypi.org", "pypi.org:0", "a*b.org:443", "*:443", "x:99999", ":443"] { #expect(AllowRule(bad) == nil, "\(bad)") }
    }
}
