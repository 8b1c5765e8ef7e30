/// Serialises a sandbox's steps: advancing the step counter, checkpoints,
/// restore. FIFO; a waiter's cancellation does not skip its turn.
actor StepLock {
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        await acquire()
        defer { release() }
        return try await body()
    }

    /// Like `run`, but `body` may hand back a tail: work that must still
    /// happen under the lock but that the caller need not wait for (a
    /// checkpoint's catalog row). The result returns at once; the lock is
    /// released when the tail ends.
    func run<T: Sendable>(withTail body: @Sendable () async -> (T, (@Sendable () async -> Void)?)) async -> T {
        await acquire()
        let (value, tail) = await body()
        guard let tail else { release(); return value }
        Task { await tail(); self.release() }
        return value
    }

    private func acquire() async {
        if busy { await withCheckedContinuation { waiters.append($0) } }
        busy = true
    }

    private func release() {
        if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
    }
}
