import Foundation
import Testing
import SandpitCore
import SandpitTestSupport
@testable import SandpitCatalog

@Suite struct CatalogTests {
    func withCatalog(_ body: (Catalog, String) async throws -> Void) async throws {
        let dir = try TestEnv.scratch("catalog")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await body(try Catalog(path: dir + "/c.sqlite"), dir)
    }

    func record(_ id: String, at: Int64, state: SandboxState = .running, meta: [String: String] = [:]) -> SandboxRecord {
        SandboxRecord(id: id, state: state, template: "default", policy: "default", metadata: meta, createdAt: at, lastActiveAt: at)
    }

    @Test func migratesToTheLatestSchemaAndReopens() async throws {
        let dir = try TestEnv.scratch("catalog")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            // The catalog holds SQLite's lock while open (one daemon per data
            // dir), so the reopen below comes after this one is gone.
            let c = try Catalog(path: dir + "/c.sqlite")
            #expect(try c.schemaVersion == Catalog.migrations.count)
            try await c.insertSandbox(record("sb_a", at: 1))
        }
        let again = try Catalog(path: dir + "/c.sqlite")
        #expect(try again.schemaVersion == Catalog.migrations.count)
        #expect(try await again.sandbox("sb_a")?.template == "default")
    }

    @Test func pagesInCreationOrderAndSkipsDeleted() async throws {
        try await withCatalog { c, _ in
            for i in 0..<5 { try await c.insertSandbox(record("sb_\(i)", at: Int64(10 + i))) }
            try await c.deleteSandbox("sb_2", at: 99)
            let first = try await c.listSandboxes(state: nil, after: nil, limit: 2)
            #expect(first.map(\.id) == ["sb_0", "sb_1"])
            let next = try await c.listSandboxes(state: nil, after: (first[1].createdAt, first[1].id), limit: 10)
            #expect(next.map(\.id) == ["sb_3", "sb_4"])
        }
    }

    @Test func recordsExecsAndLosesRunningOnesAtReconcile() async throws {
        try await withCatalog { c, _ in
            try await c.insertSandbox(record("sb_e", at: 1))
            try await c.insertExec(ExecRecord(sandboxId: "sb_e", execId: "ex_1", command: ["true"], state: .running, startedAt: 2),
                                   sandboxStep: 0, execSeq: 1, lastActiveAt: 2)
            try c.loseRunningExecs(at: 3)
            let e = try await c.exec("sb_e", "ex_1")
            #expect(e?.state == .lost)
            #expect(e?.command == ["true"])
        }
    }

    @Test func metadataRoundTrips() async throws {
        try await withCatalog { c, _ in
            try await c.insertSandbox(record("sb_m", at: 1, meta: ["run": "42", "ü": "x\"y"]))
            #expect(try await c.sandbox("sb_m")?.metadata == ["run": "42", "ü": "x\"y"])
        }
    }
}
