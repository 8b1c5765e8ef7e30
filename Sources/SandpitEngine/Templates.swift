#if canImport(Glibc)
import Glibc
#endif
import SandpitCore
import SandpitOS
import Synchronization

/// What a sandbox's root is made of: overlay lower directories (top first),
/// whether the host's /usr is mounted in, and the template's command defaults.
struct SandboxImage: Sendable {
    /// The template id a build step's throwaway sandbox records: no real
    /// template, and nothing to collect when it is deleted.
    static let buildStepId = "build"

    var templateId: String
    var lower: [String]
    var hostUsr: Bool
    var config: ImageConfig
}

/// One line of `template.progress`.
public struct BuildEvent: Sendable {
    public var step: Int
    public var total: Int
    public var message: String
    public var cached: Bool?
    public var stream: OutputStream?
    public var data: [UInt8]?
    /// A layer being downloaded: its digest, bytes so far and in all.
    public var layer: String?
    public var bytesDone: Int64?
    public var bytesTotal: Int64?
}

/// What `template.build` asks for, validated.
public struct BuildRequest: Sendable {
    public var name: String
    public var tag: String
    public var spec: String
    /// Host directory COPY sources and relative FROM paths resolve against.
    public var context: String?
    public var policy: String

    public init(name: String, tag: String, spec: String, context: String?, policy: String = "build") {
        self.name = name
        self.tag = tag
        self.spec = spec
        self.context = context
        self.policy = policy
    }
}

extension Engine {
    func layerDir(_ key: String) -> String { storage.root + "/layers/" + key }

    /// The image a sandbox of this template runs on.
    func image(_ templateId: String) async throws -> SandboxImage {
        if templateId == TemplateRecord.builtin.templateId { return image(layers: [], config: .default, id: templateId) }
        guard let t = try await catalog.template(id: templateId) else {
            throw SandpitError(.notFound, "template \(templateId) no longer exists", details: ["templateId": .string(templateId)])
        }
        return image(layers: t.layers, config: t.config, id: templateId)
    }

    func image(layers: [String], config: ImageConfig, id: String) -> SandboxImage {
        var lower = layers.reversed().map(layerDir)
        if config.base == .host { lower.append(defaultLayer) }
        return SandboxImage(templateId: id, lower: lower, hostUsr: config.base == .host, config: config)
    }

    /// The template `ref` (`name[:tag]`) names now for `caller`: its own
    /// tag, else a shared one. Another tenant's is `not_found`, exactly as a
    /// name that does not exist.
    public func resolveTemplate(_ ref: String, caller: Caller) async throws -> TemplateRecord {
        if ref == "default" || ref == "default:latest" { return .builtin }
        let (name, tag) = try TemplateRef.parse(ref)
        guard let t = try await catalog.template(name: name, tag: tag, visibleTo: caller.uid) else {
            let known = ["default"] + (try await catalog.templates(name: nil, visibleTo: caller.uid)).map(\.reference)
            throw SandpitError(.notFound, "template \(name):\(tag) does not exist (available: \(known.joined(separator: ", ")))",
                               details: ["template": .string(ref)])
        }
        return t
    }

    /// Templates `caller` may use (an admin: every tenant's too).
    public func templates(name: String?, caller: Caller) async throws -> [TemplateRecord] {
        var out = try await catalog.templates(name: name, visibleTo: caller.admin ? nil : caller.uid)
        if name == nil || name == "default" { out.insert(.builtin, at: 0) }
        return out
    }

    public func layers(of t: TemplateRecord) async throws -> [LayerRecord] {
        var out: [LayerRecord] = []
        for k in t.layers { out.append(try await catalog.layer(k) ?? LayerRecord(key: k, createdBy: "?", bytes: 0, createdAt: 0)) }
        return out
    }

    // MARK: delete and garbage collection

    /// Removes the tag `name:tag`. Refused with `conflict` while sandboxes
    /// or other templates were made from it, unless `force`: then the tag
    /// goes and the layers stay until the last dependent is gone.
    public func deleteTemplate(name: String, tag: String, force: Bool, caller: Caller) async throws -> TemplateRecord {
        guard name != "default" else { throw SandpitError(.permissionDenied, "the built-in default template cannot be deleted") }
        return try await buildLock.run { [self] in
            // A tenant removes its own tag; an admin the shared one. A shared
            // tag is the admin's to remove; another tenant's does not exist here.
            let owner = caller.admin ? TemplateRecord.shared : caller.uid
            guard let t = try await catalog.template(name: name, tag: tag, owner: owner) else {
                if !caller.admin, try await catalog.template(name: name, tag: tag, owner: TemplateRecord.shared) != nil {
                    throw SandpitError(.permissionDenied, "template \(name):\(tag) is shared by the daemon's admin; only an admin can delete it")
                }
                throw SandpitError.notFound("Template", "\(name):\(tag)")
            }
            let others = try await catalog.templates(name: nil).filter { $0.templateId == t.templateId && !($0.reference == t.reference && $0.owner == t.owner) }
            if others.isEmpty && !force {
                let deps = try await catalog.templateDependents(t.templateId)
                if !deps.sandboxes.isEmpty || !deps.templates.isEmpty {
                    var why: [String] = []
                    if !deps.sandboxes.isEmpty { why.append("\(deps.sandboxes.count) sandbox(es) (\(deps.sandboxes.prefix(3).joined(separator: ", ")))") }
                    if !deps.templates.isEmpty { why.append("template(s) \(deps.templates.prefix(3).joined(separator: ", "))") }
                    throw SandpitError(.conflict, "template \(t.reference) is in use by \(why.joined(separator: " and ")); delete those first or pass force",
                                       details: ["sandboxes": .array(deps.sandboxes.map { .string($0) }),
                                                 "templates": .array(deps.templates.map { .string($0) })])
                }
            }
            try await catalog.untag(name: name, tag: tag, owner: owner)
            if others.isEmpty {
                await discardTemplatePools(t.templateId)   // warm sandboxes hold its layers
                await retireZygotes(t.templateId)
            }
            await catalog.event("template-deleted", sandbox: nil, detail: "\(t.reference) \(t.templateId)")
            try await collectLayers()
            return t
        }
    }

    /// Frees templates and layers nothing references any more. Call under `buildLock`.
    func collectLayers() async throws {
        let dead = try await catalog.collectTemplates()
        for k in dead {
            do { try FS.removeTree(layerDir(k)) } catch { logger.warning("could not remove layer", metadata: ["layer": "\(k)", "error": "\(error)"]) }
        }
        if !dead.isEmpty { logger.info("collected layers", metadata: ["count": "\(dead.count)"]) }
    }

    /// After a sandbox delete: its template may now be unreferenced.
    /// (Not after a build step's sandbox: the layers of a build that failed
    /// stay as cache until the next collection.)
    func collectAfterDelete(templateId: String) {
        guard templateId != TemplateRecord.builtin.templateId, templateId != SandboxImage.buildStepId else { return }
        Task { try? await buildLock.run { [self] in try await collectLayers() } }
    }

    /// Start-up: half-written layers go, and so do layer directories the
    /// catalog does not list (a crash between the rename and the row).
    func reconcileLayers() throws {
        let root = storage.root + "/layers"
        try FS.mkdirs(root, mode: 0o711)
        let known = try catalog.allLayerKeys()
        var present = Set<String>()
        for d in FS.listDirectory(root) {
            if d.hasSuffix(".partial") || !known.contains(d) {
                logger.info("removing unfinished layer", metadata: ["layer": "\(d)"])
                try? FS.removeTree(root + "/" + d)
            } else { present.insert(d) }
        }
        let missing = known.subtracting(present)
        if !missing.isEmpty {
            logger.warning("dropping layers whose files are gone", metadata: ["count": "\(missing.count)"])
            try catalog.dropLayers(Array(missing))
        }
    }

    // MARK: build

    /// Builds `req.spec` into a template tagged `name:tag`. Each instruction
    /// is a content-addressed layer: an unchanged prefix of the spec is
    /// reused from the cache; RUN steps run in a sandbox under the build
    /// policy. Builds run one at a time.
    public func buildTemplate(_ req: BuildRequest, caller: Caller, progress: @escaping @Sendable (BuildEvent) -> Void) async throws -> TemplateRecord {
        guard !closing.load(ordering: .relaxed) else { throw SandpitError(.unavailable, "the daemon is shutting down") }
        guard req.name != "default" else { throw SandpitError(.permissionDenied, "the name default is reserved for the built-in template") }
        let spec = try BuildSpec.parse(req.spec)
        var buildPlan = try plan(policy: req.policy, purpose: .build)
        buildPlan.policy.checkpoints = .off
        let plan = buildPlan
        if req.context != nil || spec.usesHostPaths {
            guard caller.admin else {
                throw SandpitError(.permissionDenied, "builds that read host files (COPY, FROM a path, a spec file) need an admin client (the daemon's owner or server.auth)")
            }
        }
        if case .image = spec.base, !caller.admin { throw Self.pullNeedsAdmin }
        return try await buildLock.run { [self] in
            let total = spec.steps.count + 1
            var b = Build(engine: self, req: req, plan: plan, caller: caller, total: total, progress: progress)
            try await b.from(spec.base)
            for (i, line) in spec.steps.enumerated() {
                try await b.step(i + 2, line)
            }
            let t = try await b.finish()
            try await collectLayers()
            return t
        }
    }

    /// Runs one RUN instruction in a throwaway build sandbox on `layers`
    /// and returns the directory holding what it changed (under `dest`).
    func runBuildStep(_ argv: [String], layers: [String], config: ImageConfig, plan: SandboxPlan, label: String,
                      into dest: String, caller: Caller, output: @escaping @Sendable (OutputChunk) -> Void) async throws -> ExecOutcome {
        let img = image(layers: layers, config: config, id: SandboxImage.buildStepId)
        let id = Identifier.make("sb"), now = Clock.nowMs()
        var record = SandboxRecord(id: id, state: .starting, template: label, policy: plan.policy.name, metadata: ["sandpit.build": label],
                                   createdAt: now, lastActiveAt: now, owner: caller.uid, templateId: SandboxImage.buildStepId)
        try await catalog.insertSandbox(record)
        defer { Task { try? await self.delete(id, caller: .inProcess) } }
        let rt = try await launch(record, plan: plan, image: img)
        record.state = .running
        rt.state.withLock { $0.record = record }
        registry.withLock { $0[id] = rt }
        let session = try await exec(id, ExecRequest(argv: argv), caller: .inProcess)
        var seq = -1
        var outcome: ExecOutcome
        while true {
            let (chunks, o) = await session.next(after: seq)
            for c in chunks { output(c); seq = c.seq }
            if let o { outcome = o; break }
        }
        _ = await session.waitRecorded()
        // Whatever the step left running goes before its files are read.
        await teardown(rt)
        guard outcome.exitCode == 0, outcome.signal == nil, outcome.spawnError == nil else { return outcome }
        let disk = try SandboxDisk.mount(sandboxDir(id) + "/disk.img")
        defer { disk.close() }
        try LayerFS.copyTree("/proc/\(getpid())/fd/\(disk.raw)/\(SandboxDisk.upper)", to: dest)
        return outcome
    }
}

extension Engine {
    /// Pulling makes the daemon fetch from any host and unpack what it gets
    /// on the host as root: the operator's call, as reading host files is.
    static let pullNeedsAdmin = SandpitError(.permissionDenied, "builds FROM a registry image need an admin client (the daemon's owner or server.auth)")
}

extension BuildSpec {
    /// Whether building this spec reads files from the daemon's host.
    var usesHostPaths: Bool {
        switch base {
        case .archive, .ociLayout: return true
        default: break
        }
        return steps.contains { if case .copy = $0.step { true } else { false } }
    }
}

/// The state of one build as it walks the spec.
struct Build {
    let engine: Engine
    let req: BuildRequest
    let plan: SandboxPlan
    let caller: Caller
    let total: Int
    let progress: @Sendable (BuildEvent) -> Void
    var layers: [String] = []
    var config = ImageConfig.default
    var key = ""
    var parent: String?

    init(engine: Engine, req: BuildRequest, plan: SandboxPlan, caller: Caller, total: Int, progress: @escaping @Sendable (BuildEvent) -> Void) {
        self.engine = engine
        self.req = req
        self.plan = plan
        self.caller = caller
        self.total = total
        self.progress = progress
    }

    var label: String { req.name + ":" + req.tag }

    func say(_ step: Int, _ message: String, cached: Bool? = nil) {
        progress(BuildEvent(step: step, total: total, message: message, cached: cached))
    }

    func hostPath(_ p: String) throws -> String {
        if p.hasPrefix("/") { return p }
        guard let ctx = req.context else {
            throw SandpitError(.invalidParams, "\(p) is relative but the build has no context directory (pass file or context)",
                               details: ["field": "context"])
        }
        return ctx + "/" + p
    }

    // MARK: FROM

    mutating func from(_ base: BuildSpec.Base) async throws {
        switch base {
        case .defaultTemplate:
            say(1, "FROM default")
            key = SHA256.hex("FROM default")
        case .template(let name, let tag):
            say(1, "FROM \(name):\(tag)")
            guard name != req.name || tag != req.tag else {
                throw SandpitError(.invalidParams, "a template cannot be built FROM itself (\(name):\(tag))", details: ["field": "spec"])
            }
            let t: TemplateRecord
            do {
                t = try await engine.resolveTemplate(name + ":" + tag, caller: caller)
            } catch let e as SandpitError where e.code == .notFound {
                // No template of that name: an image on Docker Hub, as Docker reads it.
                guard let ref = try? ImageReference.parse(name + ":" + tag) else { throw e }
                guard caller.admin else {
                    throw SandpitError(.notFound, e.message + "; an image of that name on Docker Hub would need an admin client to pull",
                                       details: e.details)
                }
                do { try await fromRegistry(ref) } catch let pull as SandpitError {
                    // Most often a mistyped template name: say both.
                    throw SandpitError(pull.code, "no template \(name):\(tag), and the image \(ref) could not be pulled: \(pull.message)",
                                       details: pull.details)
                }
                return
            }
            if !t.isBuiltin {
                layers = t.layers
                config = t.config
                parent = t.templateId
            }
            key = SHA256.hex("FROM template " + t.templateId)
            say(1, " ---> \(t.templateId)")
        case .archive(let path):
            let file = try hostPath(path)
            guard FS.exists(file) else { throw SandpitError(.notFound, "FROM \(path): \(file) does not exist", details: ["path": .string(file)]) }
            say(1, "FROM \(path)")
            let members = Set(try LayerFS.members(file).map { $0.hasPrefix("./") ? String($0.dropFirst(2)) : $0 })
            if members.contains("oci-layout") || members.contains("manifest.json") {
                let tmp = engine.storage.root + "/layers/import-" + Identifier.make("tmp") + ".partial"
                try FS.mkdir(tmp, mode: 0o700)
                defer { try? FS.removeTree(tmp) }
                say(1, " ---> unpacking image archive")
                try LayerFS.extract(file, into: tmp)
                try await fromImage(tmp)
            } else {
                config = ImageConfig(base: .rootfs)
                key = SHA256.hex("FROM rootfs " + (try LayerFS.fileDigest(file)))
                try await ensureLayer(1, createdBy: "FROM \(path)") { dir in
                    try FS.chown(dir, uid: 0, gid: 0)   // the archive's own "./" entry decides, as image ids
                    try LayerFS.extract(file, into: dir)
                    try Self.skeleton(dir)
                    try LayerFS.shiftOwnership(dir, ids: engine.config.ids)
                }
                layers.append(key)
                config = try defaultUser(config)
            }
        case .ociLayout(let path):
            let dir = try hostPath(path)
            guard FS.isDirectory(dir) else { throw SandpitError(.notFound, "FROM \(path): \(dir) is not a directory", details: ["path": .string(dir)]) }
            say(1, "FROM \(path)")
            try await fromImage(dir)
        case .image(let text):
            try await fromRegistry(try ImageReference.parse(text))
        }
    }

    /// An image from a registry: its manifest and config now, each layer
    /// only when the store does not have it yet (`RegistryClient`).
    mutating func fromRegistry(_ ref: ImageReference) async throws {
        say(1, "FROM \(ref)")
        let client = RegistryClient(ref: ref, access: engine.config.registries, partialDir: engine.storage.root + "/images/partial")
        let (manifest, digest, config) = try await client.resolve()
        say(1, " ---> \(digest)")
        var layers: [(digest: String, bytes: Int64)] = []
        for l in manifest["layers"]?.arrayValue ?? [] {
            guard let d = l["digest"]?.stringValue else { continue }
            layers.append((d, l["size"]?.intValue ?? 0))
        }
        let progress = self.progress, total = self.total
        try await fromLayers(layers.map(\.digest), imageConfig: config, source: "\(ref)") { d in
            let size = layers.first { $0.digest == d }?.bytes ?? 0
            @Sendable func event(_ done: Int64, _ message: String) -> BuildEvent {
                BuildEvent(step: 1, total: total, message: message, cached: false, layer: d, bytesDone: done, bytesTotal: size)
            }
            progress(event(0, " ---> pulling \(d.prefix(19)) (\(size) bytes)"))
            // Bytes so far at most every MiB; the last when it is all there.
            let gate = ProgressGate(every: 1 << 20)
            let path = try await client.layer(d) { done in
                if gate.due(done) { progress(event(done, " ---> \(d.prefix(19)): \(done)/\(size) bytes")) }
            }
            progress(event(size, " ---> \(d.prefix(19)): pulled and verified"))
            return path
        } done: { path in try? FS.remove(path) }
    }

    /// An OCI image layout or an unpacked `docker save` archive: its layers
    /// in order (whiteouts converted), and its Env, WorkingDir and User.
    mutating func fromImage(_ dir: String) async throws {
        func json(_ p: String) throws -> JSONValue {
            guard let v = try? JSONCodec.parse(String(decoding: try FS.readFile(p, limit: 16 << 20), as: UTF8.self)) else {
                throw SandpitError(.invalidParams, "\(p) is not valid JSON", details: ["field": "spec"])
            }
            return v
        }
        func blob(_ digest: String) throws -> String {
            let parts = digest.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[1].allSatisfy({ $0.isHexDigit }), !parts[0].contains("/") else {
                throw SandpitError(.invalidParams, "bad digest \(digest) in image", details: ["field": "spec"])
            }
            return dir + "/blobs/\(parts[0])/\(parts[1])"
        }
        var layerFiles: [(file: String, digest: String)] = []
        var imageConfig: JSONValue?
        if FS.exists(dir + "/index.json") {
            let index = try json(dir + "/index.json")
            var manifest = try json(try blob(index["manifests"]?.arrayValue?.first?["digest"]?.stringValue ?? ""))
            if let nested = manifest["manifests"]?.arrayValue {   // an index of per-platform manifests
                let pick = nested.first { $0["platform"]?["architecture"]?.stringValue == "amd64" } ?? nested.first
                manifest = try json(try blob(pick?["digest"]?.stringValue ?? ""))
            }
            for l in manifest["layers"]?.arrayValue ?? [] {
                guard let d = l["digest"]?.stringValue else { continue }
                layerFiles.append((try blob(d), d))
            }
            if let c = manifest["config"]?["digest"]?.stringValue { imageConfig = try? json(try blob(c)) }
        } else if FS.exists(dir + "/manifest.json") {
            let m = try json(dir + "/manifest.json").arrayValue?.first
            for l in m?["Layers"]?.arrayValue ?? [] {
                guard let p = l.stringValue, !p.hasPrefix("/"), !p.split(separator: "/").contains("..") else { continue }
                layerFiles.append((dir + "/" + p, "sha256:" + (try LayerFS.fileDigest(dir + "/" + p))))
            }
            if let c = m?["Config"]?.stringValue, !c.contains("..") { imageConfig = try? json(dir + "/" + c) }
        } else {
            throw SandpitError(.invalidParams, "\(dir) is neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
                               details: ["field": "spec"])
        }
        let files = Dictionary(layerFiles.map { ($0.digest, $0.file) }, uniquingKeysWith: { a, _ in a })
        try await fromLayers(layerFiles.map(\.digest), imageConfig: imageConfig, source: dir) { d in files[d]! } done: { _ in }
    }

    /// An image's layers in order, each extracted (whiteouts converted) into
    /// the store unless a layer of the same chain is there already; only
    /// then is `fetch` asked for its file (and `done` told it is used). Then
    /// the image's Env, WorkingDir and User.
    mutating func fromLayers(_ digests: [String], imageConfig: JSONValue?, source: String,
                             fetch: (String) async throws -> String, done: (String) -> Void) async throws {
        guard !digests.isEmpty else { throw SandpitError(.invalidParams, "the image at \(source) has no layers", details: ["field": "spec"]) }
        key = SHA256.hex("FROM image")
        for (i, digest) in digests.enumerated() {
            key = SHA256.hex(key + "\nLAYER " + digest)
            let last = i == digests.count - 1
            try await ensureLayer(1, createdBy: "FROM image layer \(digest.prefix(19))") { d in
                let file = try await fetch(digest)
                defer { done(file) }
                try FS.chown(d, uid: 0, gid: 0)
                try LayerFS.extract(file, into: d)
                try LayerFS.convertWhiteouts(d)
                if last { try Self.skeleton(d) }
                try LayerFS.shiftOwnership(d, ids: engine.config.ids)
            }
            layers.append(key)
        }
        var c = ImageConfig(base: .rootfs)
        let ic = imageConfig?["config"]
        for e in ic?["Env"]?.arrayValue ?? [] {
            guard let s = e.stringValue, let eq = s.firstIndex(of: "=") else { continue }
            c.env[String(s[..<eq])] = String(s[s.index(after: eq)...])
        }
        if let w = ic?["WorkingDir"]?.stringValue, w.hasPrefix("/") { c.workdir = w }
        config = c
        if let u = ic?["User"]?.stringValue, !u.isEmpty { try applyUser(u, step: 1) } else { config = try defaultUser(config) }
    }

    /// Mount points and the default user's home a sandbox needs, where the image lacks them.
    static func skeleton(_ dir: String) throws {
        for (d, mode) in [("proc", 0o555), ("dev", 0o755), ("sys", 0o555), ("tmp", 0o1777), ("home", 0o755), ("etc", 0o755)] as [(String, mode_t)]
            where !FS.lexists(dir + "/" + d) {
            try FS.mkdir(dir + "/" + d, mode: mode)
            try FS.chmod(dir + "/" + d, mode)
        }
        if FS.isDirectory(dir + "/home"), !FS.lexists(dir + "/home/user") {
            try FS.mkdir(dir + "/home/user", mode: 0o755)
            try FS.chown(dir + "/home/user", uid: 1000, gid: 1000)
        }
    }

    /// A rootfs's commands run as its `user` account when it has one, else as uid 1000.
    func defaultUser(_ c: ImageConfig) throws -> ImageConfig {
        var c = c
        let passwd = readFromStack("etc/passwd") ?? "", group = readFromStack("etc/group") ?? ""
        if let u = ImageConfig.resolveUser("user", passwd: passwd, group: group) {
            (c.user, c.uid, c.gid, c.home) = ("user", u.uid, u.gid, u.home)
        } else {
            (c.user, c.uid, c.gid, c.home) = ("1000", 1000, 1000, "/home/user")
        }
        return c
    }

    // MARK: layers

    /// The host path of `rel` in the current stack (top layer first), or nil;
    /// a whiteout hides what is below.
    func lookup(_ rel: String) -> String? {
        var dirs = layers.reversed().map(engine.layerDir)
        if config.base == .host { dirs.append(engine.defaultLayer) }
        for d in dirs {
            let p = d + "/" + rel
            var st = stat()
            guard lstat(p, &st) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFCHR && st.st_rdev == 0 { return nil }
            return p
        }
        return nil
    }

    func readFromStack(_ rel: String) -> String? {
        lookup(rel).flatMap { try? FS.readText($0) }
    }

    /// Makes the layer `key` (building it with `make` into a fresh directory)
    /// unless the cache has it. The caller puts it on the stack.
    func ensureLayer(_ step: Int, createdBy: String, _ make: (String) async throws -> Void) async throws {
        let dir = engine.layerDir(key)
        if try await engine.catalog.layer(key) != nil, FS.isDirectory(dir) {
            say(step, " ---> Using cache \(key.prefix(12))", cached: true)
        } else {
            let partial = dir + ".partial"
            try? FS.removeTree(partial)
            do {
                try FS.mkdir(partial, mode: 0o755)
                try FS.chown(partial, uid: engine.config.ids.hostID(0), gid: engine.config.ids.hostID(0))
                try await make(partial)
            } catch {
                try? FS.removeTree(partial)
                throw error
            }
            try? FS.removeTree(dir)
            _ = try sys("rename", path: dir) { rename(partial, dir) }
            Fault.point("template.layer-renamed")
            let bytes = LayerFS.treeBytes(dir)
            try await engine.catalog.insertLayer(LayerRecord(key: key, createdBy: createdBy, bytes: bytes, createdAt: Clock.nowMs()))
            say(step, " ---> \(key.prefix(12)) (\(bytes) bytes)", cached: false)
        }
    }


    /// Names the finished stack: the template id follows from the last
    /// layer key and the config, so an unchanged spec rebuilds to the same id.
    func finish() async throws -> TemplateRecord {
        let id = "tp_" + SHA256.hex(key + "\n" + JSONCodec.encode(config.json)).prefix(24)
        var bytes: Int64 = 0
        for k in layers { bytes += try await engine.catalog.layer(k)?.bytes ?? 0 }
        // An admin's build is shared with every tenant; a tenant's is its own.
        let t = TemplateRecord(templateId: id, name: req.name, tag: req.tag, createdAt: Clock.nowMs(), layers: layers, bytes: bytes,
                               config: config, parent: parent, owner: caller.admin ? TemplateRecord.shared : caller.uid)
        Fault.point("template.before-tag")
        try await engine.catalog.tagTemplate(t)
        await engine.catalog.event("template-built", sandbox: nil, detail: "\(t.reference) \(id)")
        say(total, "Successfully built \(id) as \(t.reference)")
        return try await engine.catalog.template(name: req.name, tag: req.tag, owner: t.owner) ?? t
    }

    // MARK: steps

    mutating func step(_ n: Int, _ line: BuildSpec.Line) async throws {
        let s = line.step
        say(n, "\(s.displayText)")
        key = SHA256.hex(key + "\n" + s.cacheText)
        switch s {
        case .env(let e):
            for (k, v) in e { config.env[k] = v }
        case .user(let u):
            try applyUser(u, step: n, line: line.number)
        case .preload(let m):
            config.preload = m
        case .workdir(let w):
            let path = Self.normalize(w)
            config.workdir = path
            if lookup(String(path.dropFirst())) == nil {
                let (uid, gid) = (engine.config.ids.hostID(config.uid), engine.config.ids.hostID(config.gid))
                try await ensureLayer(n, createdBy: "WORKDIR \(path)") { dir in
                    let target = try self.makeParents(in: dir, for: path)
                    try FS.mkdir(target, mode: 0o755)
                    try FS.chown(target, uid: uid, gid: gid)
                }
                layers.append(key)
            }
        case .copy(let sources, let dest):
            try await copy(n, line: line.number, sources: sources, dest: dest)
        case .run(let argv):
            try await run(n, line: line.number, argv: argv)
        }
    }

    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for c in path.split(separator: "/") {
            if c == "." || c.isEmpty { continue }
            if c == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(c)
        }
        return "/" + parts.joined(separator: "/")
    }

    mutating func applyUser(_ u: String, step: Int, line: Int = 1) throws {
        let passwd = readFromStack("etc/passwd") ?? "", group = readFromStack("etc/group") ?? ""
        guard let r = ImageConfig.resolveUser(u, passwd: passwd, group: group) else {
            throw SandpitError(.buildFailed, "step \(step) (line \(line)): USER \(u): no such user or group in the template's /etc/passwd and /etc/group",
                               details: ["step": .int(Int64(step)), "line": .int(Int64(line))])
        }
        (config.user, config.uid, config.gid, config.home) = (u.split(separator: ":").first.map(String.init) ?? u, r.uid, r.gid, r.home)
    }

    /// Creates the parents of `path` inside a new layer directory, each with
    /// the mode and owner it has in the stack (so a layer never changes the
    /// owner of a directory it only passes through). Returns the host path.
    func makeParents(in dir: String, for path: String) throws -> String {
        let comps = path.split(separator: "/").map(String.init)
        var rel = ""
        for c in comps.dropLast() {
            rel += (rel.isEmpty ? "" : "/") + c
            let host = dir + "/" + rel
            if FS.isDirectory(host) { continue }
            var st = stat()
            if let existing = lookup(rel), stat(existing, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
                try FS.mkdir(host, mode: st.st_mode & 0o7777)
                try FS.chmod(host, st.st_mode & 0o7777)
                try FS.chown(host, uid: st.st_uid, gid: st.st_gid)
            } else {
                try FS.mkdir(host, mode: 0o755)
                try FS.chown(host, uid: engine.config.ids.hostID(0), gid: engine.config.ids.hostID(0))
            }
        }
        return dir + "/" + comps.joined(separator: "/")
    }

    mutating func copy(_ n: Int, line: Int, sources: [String], dest: String) async throws {
        guard let ctx = req.context else {
            throw SandpitError(.invalidParams, "step \(n) (line \(line)): COPY needs a build context (pass file or context)", details: ["field": "context"])
        }
        let root = Self.realpath(ctx) ?? ctx
        var srcs: [String] = []
        for s in sources {
            let p = ctx + "/" + s
            guard FS.lexists(p), let real = Self.realpath(p), real == root || real.hasPrefix(root + "/") else {
                throw SandpitError(.buildFailed, "step \(n) (line \(line)): COPY source \(s) does not exist in the build context \(ctx)",
                                   details: ["step": .int(Int64(n)), "line": .int(Int64(line))])
            }
            srcs.append(s)
        }
        let absDest = dest.hasPrefix("/") ? dest : config.workdir + "/" + dest
        let intoDir = dest.hasSuffix("/") || sources.count > 1
        key = SHA256.hex(key + "\n" + (try LayerFS.contextDigest(ctx, paths: srcs)))
        let rootUid = engine.config.ids.hostID(0)
        try await ensureLayer(n, createdBy: "COPY \(sources.joined(separator: " ")) \(dest)") { dir in
            for s in srcs {
                let src = ctx + "/" + s
                let isDir = FS.isDirectory(src) && !FS.isSymlink(src)
                let target = isDir || !intoDir ? Self.normalize(absDest)
                                               : Self.normalize(absDest + "/" + (s.split(separator: "/").last.map(String.init) ?? s))
                let host = try self.makeParents(in: dir, for: target)
                if isDir && !FS.isDirectory(host) {
                    try FS.mkdir(host, mode: 0o755)
                    try FS.chown(host, uid: rootUid, gid: rootUid)
                }
                try LayerFS.copyTree(src, to: host, preserveOwners: false)
                // Copied files belong to the sandbox's root, as in Docker.
                try LayerFS.chownTree(host, uid: rootUid, gid: rootUid)
            }
        }
        layers.append(key)
    }

    static func realpath(_ p: String) -> String? {
        guard let r = Glibc.realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    mutating func run(_ n: Int, line: Int, argv: [String]) async throws {
        let stack = layers, config = config, plan = plan, label = label, caller = caller, engine = engine
        let progress = progress, total = total
        let tail = TailBuffer(limit: 8192)
        let text = BuildSpec.Step.run(argv: argv).displayText
        try await ensureLayer(n, createdBy: text) { dir in
            let o = try await engine.runBuildStep(argv, layers: stack, config: config, plan: plan, label: "build of \(label) step \(n)",
                                                  into: dir, caller: caller) { c in
                tail.append(c.bytes)
                progress(BuildEvent(step: n, total: total, message: "", stream: c.stream, data: c.bytes))
            }
            guard o.exitCode == 0, o.signal == nil, o.spawnError == nil else {
                var how = "exited with code \(o.exitCode)"
                if let e = o.spawnError { how = "could not start: \(e)" } else if let sig = o.signal {
                    how = "was killed by signal \(sig)" + (o.oomKilled ? " (out of memory)" : "") + (o.timedOut ? " (step timed out)" : "")
                }
                throw SandpitError(.buildFailed, "step \(n)/\(total) (line \(line)) \(text) \(how)",
                                   details: ["step": .int(Int64(n)), "line": .int(Int64(line)), "exitCode": .int(Int64(o.exitCode)),
                                             "output": .string(tail.text)])
            }
        }
        layers.append(key)
    }
}

/// The last `limit` bytes of a step's output, for the error of a failed step.
final class TailBuffer: Sendable {
    let limit: Int
    let bytes = Mutex<[UInt8]>([])
    init(limit: Int) { self.limit = limit }
    func append(_ b: [UInt8]) {
        bytes.withLock { buf in
            buf += b
            if buf.count > limit { buf.removeFirst(buf.count - limit) }
        }
    }
    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
}

extension BuildSpec.Step {
    /// The instruction as a person would write it (for progress and layer history).
    var displayText: String {
        switch self {
        case .run(let a): a.count == 3 && a[0] == "/bin/sh" && a[1] == "-c" ? "RUN " + a[2] : "RUN " + JSONCodec.encode(.array(a.map { .string($0) }))
        case .copy(let s, let d): "COPY " + (s + [d]).joined(separator: " ")
        case .env(let e): "ENV " + e.keys.sorted().map { "\($0)=\(e[$0]!)" }.joined(separator: " ")
        case .workdir(let w): "WORKDIR " + w
        case .user(let u): "USER " + u
        case .preload(let m): "PRELOAD " + m.joined(separator: " ")
        }
    }
}
