import Logging
import SandpitCatalog
import SandpitCore

/// Writes checkpoint rows to the catalog in batches, off the request path.
///
/// A checkpoint's files exist (and the sandbox's in-memory head has moved)
/// before its row is queued here; a row is written within a few
/// milliseconds, many in one transaction. Whatever reads checkpoints from
/// the catalog calls `flush()` first, so it always sees every checkpoint a
/// reply has named. A crash before the write leaves files without a row,
/// which the next start removes (as for a crash mid-checkpoint).
actor CheckpointLog {
    private let catalog: Catalog
    private let logger: Logger
    private var pending: [CheckpointRecord] = []
    private var scheduled = false

    init(catalog: Catalog, logger: Logger) {
        self.catalog = catalog
        self.logger = logger
    }

    func add(_ record: CheckpointRecord) {
        pending.append(record)
        guard !scheduled else { return }
        scheduled = true
        Task {
            try? await Task.sleep(for: .milliseconds(2))
            await self.flush()
        }
    }

    /// Writes what is queued; returns once it and every earlier batch are in
    /// the catalog (its queue is serial and FIFO, and the enqueue happens
    /// before the first suspension here).
    func flush() async {
        scheduled = false
        let batch = pending
        pending = []
        do {
            if batch.isEmpty { try await catalog.barrier() } else { try await catalog.insertCheckpoints(batch) }
        } catch {
            logger.error("checkpoint rows not written", metadata: ["count": "\(batch.count)", "error": "\(error)"])
        }
    }
}
