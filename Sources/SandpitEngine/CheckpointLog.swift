import Logging
import SandpitCatalog
import SandpitCore

/// Writes checkpoint rows to the catalog, many in one transaction.
///
/// A checkpoint's files exist (and the sandbox's in-memory head has moved)
/// before its row is queued here. A checkpoint a reply will name (a step,
/// `checkpoint.create`) is flushed before the reply goes, so it survives a
/// crash right after; others (a warm sandbox's start) are written within a
/// few milliseconds. Whatever reads checkpoints from the catalog calls
/// `flush()` first. A crash before the write leaves files without a row,
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
