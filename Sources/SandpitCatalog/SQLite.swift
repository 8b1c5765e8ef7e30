import CSQLite
import SandpitCore

/// A minimal SQLite connection: prepared statements, typed binds, one
/// transaction helper. Not thread-safe; `Catalog` serialises access.
/// Sendable only because `Catalog` confines every use to its serial queue.
final class SQLiteDB: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible {
        var code: Int32
        var message: String
        var description: String { "sqlite error \(code): \(message)" }
    }

    enum Value: Equatable {
        case null, int(Int64), text(String)
    }

    private var db: OpaquePointer?
    /// Prepared statements by SQL text: the catalog runs the same few
    /// statements for every exec, and preparing costs more than running them.
    private var statements: [String: OpaquePointer] = [:]

    init(path: String) throws {
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        if rc != SQLITE_OK {
            let msg = db.map { String(cString: sqlite3_errmsg($0)) } ?? "open failed"
            sqlite3_close(db)
            throw Failure(code: rc, message: "\(path): \(msg)")
        }
        sqlite3_busy_timeout(db, 5000)
    }

    deinit {
        for st in statements.values { sqlite3_finalize(st) }
        sqlite3_close(db)
    }

    /// Called when a write fails because the disk is full (SQLITE_FULL):
    /// true when it freed space, and the write is then tried once more.
    var onFull: (() -> Bool)?

    static let full: Int32 = 13   // SQLITE_FULL

    func execute(_ sql: String) throws {
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &err)
        if rc != SQLITE_OK {
            let msg = err.map { String(cString: $0) } ?? "unknown"
            sqlite3_free(err)
            throw Failure(code: rc, message: msg)
        }
    }

    @discardableResult
    func run(_ sql: String, _ binds: [Value] = []) throws -> Int {
        do {
            _ = try query(sql, binds)
        } catch let e as Failure where e.code == Self.full && sqlite3_get_autocommit(db) != 0 && onFull?() == true {
            // A statement of its own (not inside a transaction, which retries as a whole).
            _ = try query(sql, binds)
        }
        return Int(sqlite3_changes(db))
    }

    func query(_ sql: String, _ binds: [Value] = []) throws -> [[Value]] {
        var rc: Int32
        let stmt: OpaquePointer
        if let cached = statements[sql] {
            stmt = cached
        } else {
            var fresh: OpaquePointer?
            rc = sqlite3_prepare_v2(db, sql, -1, &fresh, nil)
            guard rc == SQLITE_OK, let f = fresh else { throw Failure(code: rc, message: String(cString: sqlite3_errmsg(db))) }
            stmt = f
            statements[sql] = f
        }
        defer {
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
        }
        for (i, b) in binds.enumerated() {
            let idx = Int32(i + 1)
            switch b {
            case .null: rc = sqlite3_bind_null(stmt, idx)
            case .int(let v): rc = sqlite3_bind_int64(stmt, idx, v)
            case .text(let s): rc = sqlite3_bind_text(stmt, idx, s, -1, csqlite_transient())
            }
            guard rc == SQLITE_OK else { throw Failure(code: rc, message: String(cString: sqlite3_errmsg(db))) }
        }
        var rows: [[Value]] = []
        while true {
            rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw Failure(code: rc, message: String(cString: sqlite3_errmsg(db))) }
            let n = sqlite3_column_count(stmt)
            var row: [Value] = []
            row.reserveCapacity(Int(n))
            for c in 0..<n {
                switch sqlite3_column_type(stmt, c) {
                case SQLITE_NULL: row.append(.null)
                case SQLITE_INTEGER: row.append(.int(sqlite3_column_int64(stmt, c)))
                default: row.append(.text(String(cString: sqlite3_column_text(stmt, c))))
                }
            }
            rows.append(row)
        }
        return rows
    }

    func transaction<T>(_ body: () throws -> T) throws -> T {
        do {
            return try once(body)
        } catch let e as Failure where e.code == Self.full && onFull?() == true {
            return try once(body)
        }
    }

    private func once<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let r = try body()
            try execute("COMMIT")
            return r
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }
}

extension SQLiteDB.Value {
    var int: Int64? { if case .int(let v) = self { v } else { nil } }
    var text: String? { if case .text(let v) = self { v } else { nil } }
}
