import NIOCore
import NIOPosix

/// The one event-loop thread for the daemon's control traffic: client
/// connections, agent channels, and the tasks that handle requests.
///
/// A request used to cross threads a dozen times or more (the socket's loop,
/// the task pool, the agent's loop, back to the pool, back to the socket's
/// loop), and on a small machine each crossing wakes a sleeping thread. On
/// one loop, a command's request, its agent frames and its reply are handled
/// on one thread that wakes only when a socket has data. Bulk work does not
/// run here: file transfers and large checkpoint scans go to their own
/// threads (`EngineThread`), and the egress proxy and port forwards use the
/// shared NIO group.
public enum ControlLoop {
    private static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    public static let loop: any EventLoop = group.next()
    /// For `withTaskExecutorPreference` / `Task(executorPreference:)`.
    public static let executor = EventLoopTaskExecutor(loop)
}

/// Runs Swift tasks' jobs on an event loop.
public final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    let loop: any EventLoop
    init(_ loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let me = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: me) }
    }
}
