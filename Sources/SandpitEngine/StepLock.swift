/// Serialises a sandbox's steps: advancing the step counter, checkpoints,
/// restore. FIFO; a waiter's cancellation does not skip its turn.
actor StepLock {
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var followUps: [@Sendable () async -> Void] = []

    /// For the holder: `work` runs after the holder's body returns and before
    /// anyone else gets the lock, so the holder can answer its caller without
    /// waiting for it while no later step, restore or fork can see the step
    /// half done. It runs on the cooperative pool, beside the answer.
    func finishLater(_ work: @escaping @Sendable () async -> Void) {
        followUps.append(work)
    }

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
        if !followUps.isEmpty {
            let work = followUps
            followUps = []
            Task(executorPreference: globalConcurrentExecutor) {
                for w in work { await w() }
                await self.release()
            }
            return
        }
        if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
    }
}
