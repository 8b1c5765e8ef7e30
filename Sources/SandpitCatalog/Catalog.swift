#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import SandpitCore
import Synchronization

/// The durable record of sandboxes, execs and events, in SQLite (WAL).
/// Every call runs on one serial dispatch queue, off Swift's cooperative pool,
/// because SQLite blocks.
public final class Catalog: @unchecked Sendable {
    private let db: SQLiteDB
    private let queue = DispatchQueue(label: "sandpit.catalog")
    public let path: String

    /// Ordered schema migrations; index + 1 is the schema version (PRAGMA user_version).
    static let migrations: [String] = [
        """
        CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            template TEXT NOT NULL,
            policy TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            last_active_at INTEGER NOT NULL,
            step INTEGER NOT NULL DEFAULT 0,
            exec_seq INTEGER NOT NULL DEFAULT 0,
            owner INTEGER NOT NULL DEFAULT -1,
            state_reason TEXT
        );
        CREATE INDEX sandboxes_state ON sandboxes(state);
        CREATE TABLE execs (
            sandbox_id TEXT NOT NULL,
            exec_id TEXT NOT NULL,
            command TEXT NOT NULL,
            state TEXT NOT NULL,
            exit_code INTEGER,
            signal INTEGER,
            timed_out INTEGER NOT NULL DEFAULT 0,
            started_at INTEGER NOT NULL,
            ended_at INTEGER,
            stdout_bytes INTEGER NOT NULL DEFAULT 0,
            stderr_bytes INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (sandbox_id, exec_id)
        );
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            sandbox_id TEXT,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE templates (
            name TEXT NOT NULL,
            tag TEXT NOT NULL,
            template_id TEXT NOT NULL UNIQUE,
            created_at INTEGER NOT NULL,
            layers TEXT NOT NULL DEFAULT '[]',
            bytes INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (name, tag)
        );
        """,
        // 2: checkpoints. A sandbox's head is the checkpoint its files were last
        // saved as or restored from; the next checkpoint's parent.
        """
        CREATE TABLE checkpoints (
            id TEXT PRIMARY KEY,
            sandbox_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            name TEXT,
            parent_id TEXT,
            created_at INTEGER NOT NULL,
            diff TEXT NOT NULL,
            bytes INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX checkpoints_sandbox ON checkpoints(sandbox_id, created_at);
        ALTER TABLE sandboxes ADD COLUMN head TEXT;
        """,
        // 3: templates. A template is an immutable layer stack; tags name
        // templates; layers are content addressed (the build cache).
        """
        DROP TABLE templates;
        CREATE TABLE templates (
            template_id TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            layers TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            config TEXT NOT NULL,
            parent TEXT
        );
        CREATE TABLE tags (
            name TEXT NOT NULL,
            tag TEXT NOT NULL,
            template_id TEXT NOT NULL REFERENCES templates(template_id),
            created_at INTEGER NOT NULL,
            PRIMARY KEY (name, tag)
        );
        CREATE TABLE layers (
            key TEXT PRIMARY KEY,
            created_by TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        );
        ALTER TABLE sandboxes ADD COLUMN template_id TEXT NOT NULL DEFAULT 'default';
        """,
        // 4: template tags belong to their owner (a uid; -1 = shared, built by
        // an admin): two tenants may each have their own `pip:latest`.
        """
        CREATE TABLE tags_owned (
            name TEXT NOT NULL,
            tag TEXT NOT NULL,
            owner INTEGER NOT NULL DEFAULT -1,
            template_id TEXT NOT NULL REFERENCES templates(template_id),
            created_at INTEGER NOT NULL,
            PRIMARY KEY (name, tag, owner)
        );
        INSERT INTO tags_owned (name, tag, owner, template_id, created_at) SELECT name, tag, -1, template_id, created_at FROM tags;
        DROP TABLE tags;
        ALTER TABLE tags_owned RENAME TO tags;
        """,
    ]

    /// Space kept for the catalog on the data dir's disk (see `DiskReserve`):
    /// one part for a running daemon's writes, one for a start on a disk
    /// that the previous run left full (its part already spent).
    public let reserve: DiskReserve
    public let startReserve: DiskReserve

    public init(path: String) throws {
        self.path = path
        reserve = DiskReserve(path: path + ".reserve", bytes: 16 << 20)
        startReserve = DiskReserve(path: path + ".reserve-start", bytes: 8 << 20)
        if !reserve.held && startReserve.held && !reserve.ensure() {
            // Still full: this start spends the second part.
            _ = startReserve.release()
        }
        reserve.ensure()
        startReserve.ensure()
        db = try SQLiteDB(path: path)
        db.onFull = { [reserve, startReserve] in reserve.release() || startReserve.release() }
        // One daemon owns a data dir (its lock file says so), so nothing else
        // opens this database: holding SQLite's lock for good saves the file
        // lock calls of every transaction and the WAL's shared-memory index.
        try db.execute("PRAGMA locking_mode=EXCLUSIVE")
        try db.execute("PRAGMA journal_mode=WAL")
        try db.execute("PRAGMA synchronous=NORMAL")
        try db.execute("PRAGMA foreign_keys=ON")
        try migrate()
    }

    public var schemaVersion: Int {
        get throws { Int(try db.query("PRAGMA user_version").first?.first?.int ?? 0) }
    }

    private func migrate() throws {
        let current = try schemaVersion
        guard current <= Self.migrations.count else {
            throw SandpitError(.unavailable, "catalog \(path) has schema version \(current), newer than this sandpit (\(Self.migrations.count))")
        }
        for v in current..<Self.migrations.count {
            try db.transaction {
                try db.execute(Self.migrations[v])
                try db.execute("PRAGMA user_version = \(v + 1)")
            }
        }
    }

    @discardableResult
    private func onQueue<T: Sendable>(_ body: @escaping @Sendable (SQLiteDB) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            queue.async { [db] in c.resume(with: Result { try body(db) }) }
        }
    }

    /// Synchronous access, for start-up and shutdown paths.
    public func sync<T>(_ body: (Catalog) throws -> T) rethrows -> T { try queue.sync { try body(self) } }

    // MARK: sandboxes

    static func encodeMetadata(_ m: [String: String]) -> String {
        var o = JSONObject()
        for k in m.keys.sorted() { o[k] = .string(m[k]!) }
        return JSONCodec.encode(.object(o))
    }

    static func decodeMetadata(_ s: String) -> [String: String] {
        guard let v = try? JSONCodec.parse(s), let o = v.objectValue else { return [:] }
        var out: [String: String] = [:]
        for (k, v) in o { if let s = v.stringValue { out[k] = s } }
        return out
    }

    static let sandboxColumns = "id, state, template, policy, metadata, created_at, last_active_at, step, exec_seq, owner, state_reason, head, template_id"

    static func sandbox(_ r: [SQLiteDB.Value]) -> SandboxRecord {
        SandboxRecord(id: r[0].text ?? "", state: SandboxState(rawValue: r[1].text ?? "") ?? .stopped,
                      template: r[2].text ?? "", policy: r[3].text ?? "", metadata: decodeMetadata(r[4].text ?? "{}"),
                      createdAt: r[5].int ?? 0, lastActiveAt: r[6].int ?? 0, step: Int(r[7].int ?? 0),
                      execSeq: Int(r[8].int ?? 0), owner: r[9].int ?? -1, stateReason: r[10].text, head: r[11].text,
                      templateId: r[12].text ?? "default")
    }

    public func insertSandbox(_ s: SandboxRecord) async throws {
        try await onQueue { db in
            try db.run("INSERT INTO sandboxes (\(Self.sandboxColumns)) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", [
                .text(s.id), .text(s.state.rawValue), .text(s.template), .text(s.policy), .text(Self.encodeMetadata(s.metadata)),
                .int(s.createdAt), .int(s.lastActiveAt), .int(Int64(s.step)), .int(Int64(s.execSeq)), .int(s.owner),
                s.stateReason.map { .text($0) } ?? .null, s.head.map { .text($0) } ?? .null, .text(s.templateId),
            ])
        }
    }

    public func updateSandbox(_ s: SandboxRecord) async throws {
        try await onQueue { db in
            try db.run("UPDATE sandboxes SET state=?, last_active_at=?, step=?, exec_seq=?, state_reason=?, head=? WHERE id=?", [
                .text(s.state.rawValue), .int(s.lastActiveAt), .int(Int64(s.step)), .int(Int64(s.execSeq)),
                s.stateReason.map { .text($0) } ?? .null, s.head.map { .text($0) } ?? .null, .text(s.id),
            ])
        }
    }

    public func sandbox(_ id: String) async throws -> SandboxRecord? {
        try await onQueue { db in
            try db.query("SELECT \(Self.sandboxColumns) FROM sandboxes WHERE id=?", [.text(id)]).first.map(Self.sandbox)
        }
    }

    /// Sandboxes ordered by (created_at, id), after `cursor` (an id), excluding deleted ones.
    public func listSandboxes(state: SandboxState?, after cursor: (Int64, String)?, limit: Int) async throws -> [SandboxRecord] {
        try await onQueue { db in
            var sql = "SELECT \(Self.sandboxColumns) FROM sandboxes WHERE state != 'deleted'"
            var binds: [SQLiteDB.Value] = []
            if let state { sql += " AND state = ?"; binds.append(.text(state.rawValue)) }
            if let (at, id) = cursor {
                sql += " AND (created_at > ? OR (created_at = ? AND id > ?))"
                binds += [.int(at), .int(at), .text(id)]
            }
            sql += " ORDER BY created_at, id LIMIT ?"
            binds.append(.int(Int64(limit)))
            return try db.query(sql, binds).map(Self.sandbox)
        }
    }

    public func allSandboxes() throws -> [SandboxRecord] {
        try queue.sync { try db.query("SELECT \(Self.sandboxColumns) FROM sandboxes WHERE state != 'deleted'").map(Self.sandbox) }
    }

    /// Marks a sandbox deleted at once (start-up reconciliation; call inside `sync`).
    public func forget(_ id: String) throws {
        _ = try db.run("UPDATE sandboxes SET state='deleted', state_reason='build sandbox of a daemon that stopped' WHERE id=?", [.text(id)])
        _ = try db.run("DELETE FROM checkpoints WHERE sandbox_id=?", [.text(id)])
    }

    public func setState(_ id: String, _ state: SandboxState, reason: String?) throws {
        try queue.sync {
            _ = try db.run("UPDATE sandboxes SET state=?, state_reason=? WHERE id=?", [.text(state.rawValue), reason.map { .text($0) } ?? .null, .text(id)])
        }
    }

    /// Marks a sandbox deleted, its running execs lost and (with `checkpoints`)
    /// forgets its checkpoints, in one transaction: a crash leaves it whole or gone.
    public func deleteSandbox(_ id: String, at: Int64, checkpoints: Bool = false) async throws {
        try await onQueue { db in
            try db.transaction {
                if checkpoints { try db.run("DELETE FROM checkpoints WHERE sandbox_id=?", [.text(id)]) }
                try db.run("UPDATE sandboxes SET state='deleted', state_reason='deleted', last_active_at=? WHERE id=?", [.int(at), .text(id)])
                try db.run("UPDATE execs SET state='lost', ended_at=? WHERE sandbox_id=? AND state='running'", [.int(at), .text(id)])
            }
        }
    }

    // MARK: execs

    public func insertExec(_ e: ExecRecord, sandboxStep: Int, execSeq: Int, lastActiveAt: Int64) async throws {
        try await onQueue { db in
            try db.transaction {
                try db.run("INSERT INTO execs (sandbox_id, exec_id, command, state, started_at) VALUES (?,?,?,?,?)", [
                    .text(e.sandboxId), .text(e.execId), .text(JSONCodec.encode(.array(e.command.map { .string($0) }))),
                    .text(e.state.rawValue), .int(e.startedAt),
                ])
                try db.run("UPDATE sandboxes SET exec_seq=?, last_active_at=? WHERE id=?", [.int(Int64(execSeq)), .int(lastActiveAt), .text(e.sandboxId)])
            }
        }
    }

    public func finishExec(_ e: ExecRecord, sandboxStep: Int) async throws {
        try await onQueue { db in
            try db.transaction {
                try db.run("""
                    UPDATE execs SET state=?, exit_code=?, signal=?, timed_out=?, ended_at=?, stdout_bytes=?, stderr_bytes=?
                    WHERE sandbox_id=? AND exec_id=?
                    """, [
                    .text(e.state.rawValue), e.exitCode.map { .int(Int64($0)) } ?? .null, e.signal.map { .int(Int64($0)) } ?? .null,
                    .int(e.timedOut ? 1 : 0), e.endedAt.map { .int($0) } ?? .null, .int(e.stdoutBytes), .int(e.stderrBytes),
                    .text(e.sandboxId), .text(e.execId),
                ])
                try db.run("UPDATE sandboxes SET step=?, last_active_at=? WHERE id=?", [.int(Int64(sandboxStep)), .int(e.endedAt ?? 0), .text(e.sandboxId)])
            }
        }
    }

    static let execColumns = "sandbox_id, exec_id, command, state, exit_code, signal, timed_out, started_at, ended_at, stdout_bytes, stderr_bytes"

    static func exec(_ r: [SQLiteDB.Value]) -> ExecRecord {
        let cmd = (try? JSONCodec.parse(r[2].text ?? "[]"))?.arrayValue?.compactMap(\.stringValue) ?? []
        return ExecRecord(sandboxId: r[0].text ?? "", execId: r[1].text ?? "", command: cmd,
                          state: ExecState(rawValue: r[3].text ?? "") ?? .lost, exitCode: r[4].int.map { Int($0) },
                          signal: r[5].int.map { Int($0) }, timedOut: r[6].int == 1, startedAt: r[7].int ?? 0,
                          endedAt: r[8].int, stdoutBytes: r[9].int ?? 0, stderrBytes: r[10].int ?? 0)
    }

    public func exec(_ sandboxId: String, _ execId: String) async throws -> ExecRecord? {
        try await onQueue { db in
            try db.query("SELECT \(Self.execColumns) FROM execs WHERE sandbox_id=? AND exec_id=?", [.text(sandboxId), .text(execId)]).first.map(Self.exec)
        }
    }

    /// A sandbox's latest execs, newest first.
    public func execs(of sandboxId: String, limit: Int) async throws -> [ExecRecord] {
        try await onQueue { db in
            try db.query("SELECT \(Self.execColumns) FROM execs WHERE sandbox_id=? ORDER BY started_at DESC, rowid DESC LIMIT ?",
                         [.text(sandboxId), .int(Int64(limit))]).map(Self.exec)
        }
    }

    /// Marks execs that were running when the daemon died as lost.
    public func loseRunningExecs(at: Int64) throws {
        try queue.sync { _ = try db.run("UPDATE execs SET state='lost', ended_at=? WHERE state='running'", [.int(at)]) }
    }

    // MARK: checkpoints

    static let checkpointColumns = "id, sandbox_id, step, name, parent_id, created_at, diff, bytes"

    static func checkpoint(_ r: [SQLiteDB.Value]) -> CheckpointRecord {
        var d = CheckpointDiff()
        if let v = try? JSONCodec.parse(r[6].text ?? "{}") {
            d.added = v["added"]?.arrayValue?.compactMap(\.stringValue) ?? []
            d.modified = v["modified"]?.arrayValue?.compactMap(\.stringValue) ?? []
            d.deleted = v["deleted"]?.arrayValue?.compactMap(\.stringValue) ?? []
            d.bytes = v["bytes"]?.intValue ?? 0
        }
        return CheckpointRecord(id: r[0].text ?? "", sandboxId: r[1].text ?? "", step: Int(r[2].int ?? 0), name: r[3].text,
                                parentId: r[4].text, createdAt: r[5].int ?? 0, diff: d, bytes: r[7].int ?? 0)
    }

    /// Diff paths are stored whole (the wire shows the first few).
    static func encodeDiff(_ d: CheckpointDiff) -> String {
        JSONCodec.encode(.object([
            "added": .array(d.added.map { .string($0) }), "modified": .array(d.modified.map { .string($0) }),
            "deleted": .array(d.deleted.map { .string($0) }), "bytes": .int(d.bytes),
        ]))
    }

    /// Records a checkpoint and makes it the sandbox's head, in one transaction.
    /// Several checkpoints in one transaction, in order; each becomes its
    /// sandbox's head. Rows of a sandbox deleted meanwhile are skipped.
    public func insertCheckpoints(_ cs: [CheckpointRecord]) async throws {
        try await onQueue { db in
            try db.transaction {
                for c in cs {
                    try db.run("""
                        INSERT INTO checkpoints (\(Self.checkpointColumns)) SELECT ?,?,?,?,?,?,?,?
                        WHERE EXISTS (SELECT 1 FROM sandboxes WHERE id=? AND state != 'deleted')
                        """, [
                        .text(c.id), .text(c.sandboxId), .int(Int64(c.step)), c.name.map { .text($0) } ?? .null,
                        c.parentId.map { .text($0) } ?? .null, .int(c.createdAt), .text(Self.encodeDiff(c.diff)), .int(c.bytes),
                        .text(c.sandboxId),
                    ])
                    try db.run("UPDATE sandboxes SET head=? WHERE id=? AND state != 'deleted'", [.text(c.id), .text(c.sandboxId)])
                }
            }
        }
    }

    /// Returns once every write queued before it has finished.
    public func barrier() async throws { try await onQueue { _ in } }

    public func checkpoints(of sandboxId: String) async throws -> [CheckpointRecord] {
        try await onQueue { db in
            try db.query("SELECT \(Self.checkpointColumns) FROM checkpoints WHERE sandbox_id=? ORDER BY created_at, rowid",
                         [.text(sandboxId)]).map(Self.checkpoint)
        }
    }

    public func checkpoint(_ id: String) async throws -> CheckpointRecord? {
        try await onQueue { db in
            try db.query("SELECT \(Self.checkpointColumns) FROM checkpoints WHERE id=?", [.text(id)]).first.map(Self.checkpoint)
        }
    }

    public func deleteCheckpoints(of sandboxId: String) async throws {
        try await onQueue { db in _ = try db.run("DELETE FROM checkpoints WHERE sandbox_id=?", [.text(sandboxId)]) }
    }

    /// Every checkpoint id, for reconciling the files on disk with the catalog.
    public func allCheckpointIds() throws -> Set<String> {
        try queue.sync { Set(try db.query("SELECT id FROM checkpoints").compactMap { $0[0].text }) }
    }

    /// Forgets one checkpoint (pruned): its children take its parent as theirs,
    /// so walking a branch back from its head skips it.
    public func pruneCheckpoint(_ id: String, parent: String?) async throws {
        try await onQueue { db in
            try db.transaction {
                _ = try db.run("UPDATE checkpoints SET parent_id=? WHERE parent_id=?", [parent.map { .text($0) } ?? .null, .text(id)])
                _ = try db.run("DELETE FROM checkpoints WHERE id=?", [.text(id)])
            }
        }
    }

    public func dropCheckpoints(_ ids: [String]) throws {
        try queue.sync {
            try db.transaction { for id in ids { _ = try db.run("DELETE FROM checkpoints WHERE id=?", [.text(id)]) } }
        }
    }

    // MARK: templates

    static func template(_ r: [SQLiteDB.Value]) -> TemplateRecord {
        let layers = (try? JSONCodec.parse(r[5].text ?? "[]"))?.arrayValue?.compactMap(\.stringValue) ?? []
        let config = (try? JSONCodec.parse(r[7].text ?? "{}")).flatMap(ImageConfig.init(json:)) ?? .default
        return TemplateRecord(templateId: r[2].text ?? "", name: r[0].text ?? "", tag: r[1].text ?? "", createdAt: r[3].int ?? 0,
                              layers: layers, bytes: r[6].int ?? 0, config: config, parent: r[8].text,
                              owner: r.count > 9 ? r[9].int ?? TemplateRecord.shared : TemplateRecord.shared)
    }

    static let taggedSelect = """
        SELECT g.name, g.tag, t.template_id, g.created_at, t.created_at, t.layers, t.bytes, t.config, t.parent, g.owner
        FROM tags g JOIN templates t ON t.template_id = g.template_id
        """

    /// The template a tag names for `uid`: its own tag, else a shared one.
    public func template(name: String, tag: String, visibleTo uid: Int64) async throws -> TemplateRecord? {
        try await onQueue { db in
            try db.query(Self.taggedSelect + " WHERE g.name=? AND g.tag=? AND g.owner IN (?, -1) ORDER BY g.owner = -1 LIMIT 1",
                         [.text(name), .text(tag), .int(uid)]).first.map(Self.template)
        }
    }

    /// The tag `name:tag` of exactly this owner.
    public func template(name: String, tag: String, owner: Int64) async throws -> TemplateRecord? {
        try await onQueue { db in
            try db.query(Self.taggedSelect + " WHERE g.name=? AND g.tag=? AND g.owner=?", [.text(name), .text(tag), .int(owner)]).first.map(Self.template)
        }
    }

    /// A template by id, whether or not a tag still names it (a sandbox keeps
    /// the exact template it was created from).
    public func template(id: String) async throws -> TemplateRecord? {
        try await onQueue { db in
            try db.query("""
                SELECT COALESCE(g.name, ''), COALESCE(g.tag, ''), t.template_id, t.created_at, t.created_at, t.layers, t.bytes, t.config, t.parent
                FROM templates t LEFT JOIN tags g ON g.template_id = t.template_id WHERE t.template_id=? LIMIT 1
                """, [.text(id)]).first.map(Self.template)
        }
    }

    /// Tagged templates, by name then tag (`name` filters); with `visibleTo`,
    /// only that uid's own tags and shared ones.
    public func templates(name: String?, visibleTo uid: Int64? = nil) async throws -> [TemplateRecord] {
        try await onQueue { db in
            var conds: [String] = [], args: [SQLiteDB.Value] = []
            if let name { conds.append("g.name=?"); args.append(.text(name)) }
            if let uid { conds.append("g.owner IN (?, -1)"); args.append(.int(uid)) }
            let whereClause = conds.isEmpty ? "" : " WHERE " + conds.joined(separator: " AND ")
            return try db.query(Self.taggedSelect + whereClause + " ORDER BY g.name, g.tag, g.owner", args).map(Self.template)
        }
    }

    /// Records a built template and points `name:tag` at it, in one transaction.
    public func tagTemplate(_ t: TemplateRecord) async throws {
        try await onQueue { db in
            try db.transaction {
                try db.run("""
                    INSERT INTO templates (template_id, created_at, layers, bytes, config, parent) VALUES (?,?,?,?,?,?)
                    ON CONFLICT(template_id) DO NOTHING
                    """, [.text(t.templateId), .int(t.createdAt), .text(JSONCodec.encode(.array(t.layers.map { .string($0) }))),
                          .int(t.bytes), .text(JSONCodec.encode(t.config.json)), t.parent.map { .text($0) } ?? .null])
                try db.run("INSERT OR REPLACE INTO tags (name, tag, owner, template_id, created_at) VALUES (?,?,?,?,?)",
                           [.text(t.name), .text(t.tag), .int(t.owner), .text(t.templateId), .int(t.createdAt)])
            }
        }
    }

    public func untag(name: String, tag: String, owner: Int64) async throws {
        try await onQueue { db in _ = try db.run("DELETE FROM tags WHERE name=? AND tag=? AND owner=?", [.text(name), .text(tag), .int(owner)]) }
    }

    /// What still depends on a template: sandboxes (not deleted) created from
    /// it and templates built from it.
    public func templateDependents(_ id: String) async throws -> (sandboxes: [String], templates: [String]) {
        try await onQueue { db in
            let sbs = try db.query("SELECT id FROM sandboxes WHERE template_id=? AND state != 'deleted' ORDER BY created_at",
                                   [.text(id)]).compactMap { $0[0].text }
            let tps = try db.query("""
                SELECT COALESCE(g.name || ':' || g.tag, t.template_id) FROM templates t LEFT JOIN tags g ON g.template_id = t.template_id
                WHERE t.parent=?
                """, [.text(id)]).compactMap { $0[0].text }
            return (sbs, tps)
        }
    }

    /// Drops templates that no tag names, no sandbox uses and no other
    /// template was built from (repeated until nothing changes), then the
    /// layers no remaining template lists. Returns the layer keys dropped.
    public func collectTemplates() async throws -> [String] {
        try await onQueue { db in
            try db.transaction {
                while true {
                    let n = try db.run("""
                        DELETE FROM templates WHERE template_id NOT IN (SELECT template_id FROM tags)
                        AND template_id NOT IN (SELECT template_id FROM sandboxes WHERE state != 'deleted')
                        AND template_id NOT IN (SELECT parent FROM templates WHERE parent IS NOT NULL)
                        """)
                    if n == 0 { break }
                }
                var used = Set<String>()
                for r in try db.query("SELECT layers FROM templates") {
                    for k in (try? JSONCodec.parse(r[0].text ?? "[]"))?.arrayValue ?? [] { if let s = k.stringValue { used.insert(s) } }
                }
                let all = try db.query("SELECT key FROM layers").compactMap { $0[0].text }
                let dead = all.filter { !used.contains($0) }
                for k in dead { try db.run("DELETE FROM layers WHERE key=?", [.text(k)]) }
                return dead
            }
        }
    }

    public func layer(_ key: String) async throws -> LayerRecord? {
        try await onQueue { db in
            try db.query("SELECT key, created_by, bytes, created_at FROM layers WHERE key=?", [.text(key)]).first.map {
                LayerRecord(key: $0[0].text ?? "", createdBy: $0[1].text ?? "", bytes: $0[2].int ?? 0, createdAt: $0[3].int ?? 0)
            }
        }
    }

    public func insertLayer(_ l: LayerRecord) async throws {
        try await onQueue { db in
            try db.run("INSERT OR REPLACE INTO layers (key, created_by, bytes, created_at) VALUES (?,?,?,?)",
                       [.text(l.key), .text(l.createdBy), .int(l.bytes), .int(l.createdAt)])
        }
    }

    /// Bytes of all layers (call inside `sync`).
    public func layerBytes() throws -> Int64 { try db.query("SELECT COALESCE(SUM(bytes), 0) FROM layers").first?.first?.int ?? 0 }

    public func allLayerKeys() throws -> Set<String> {
        try queue.sync { Set(try db.query("SELECT key FROM layers").compactMap { $0[0].text }) }
    }

    public func dropLayers(_ keys: [String]) throws {
        try queue.sync {
            try db.transaction { for k in keys { _ = try db.run("DELETE FROM layers WHERE key=?", [.text(k)]) } }
        }
    }

    // MARK: events

    public func event(_ kind: String, sandbox: String?, detail: String = "") async {
        _ = try? await onQueue { db in
            try db.run("INSERT INTO events (at, sandbox_id, kind, detail) VALUES (strftime('%s','now')*1000, ?, ?, ?)",
                       [sandbox.map { .text($0) } ?? .null, .text(kind), .text(detail)])
        }
    }
}

/// A file of real blocks kept beside the catalog: when the disk fills (the
/// store's image, sandboxes' files, anything else on it), the catalog's next
/// write fails with SQLITE_FULL, the reserve is deleted and the write goes
/// through. So a daemon on a full disk still records what it does and still
/// starts (its start writes to the catalog too). Made again once the disk
/// has room for it and some.
public final class DiskReserve: Sendable {
    public let path: String
    public let bytes: Int64
    private let lock = Mutex<Void>(())

    public init(path: String, bytes: Int64) {
        self.path = path
        self.bytes = bytes
    }

    /// Whether the reserve is in place.
    public var held: Bool { access(path, F_OK) == 0 }

    /// Creates it when missing and the disk has twice its size free. True when held afterwards.
    @discardableResult
    public func ensure() -> Bool {
        lock.withLock { _ in
            if held { return true }
            var st = statvfs()
            let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
            guard statvfs(dir.isEmpty ? "/" : dir, &st) == 0,
                  Int64(st.f_bavail) * Int64(st.f_frsize) >= 2 * bytes else { return false }
            let tmp = path + ".tmp"
            let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { return false }
            let rc = posix_fallocate(fd, 0, off_t(bytes))
            close(fd)
            guard rc == 0, rename(tmp, path) == 0 else { unlink(tmp); return false }
            return true
        }
    }

    /// Deletes it: true when that freed space.
    public func release() -> Bool {
        lock.withLock { _ in unlink(path) == 0 }
    }
}
