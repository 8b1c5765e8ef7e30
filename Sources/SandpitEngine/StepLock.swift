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

    private func acquire() async {
        if busy { await withCheckedContinuation { waiters.append($0) } }
        busy = true
    }

    private func release() {
        if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
    }
}
