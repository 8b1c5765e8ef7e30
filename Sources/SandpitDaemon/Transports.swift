#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import CSandpit
import Logging
import SandpitEngine
import Synchronization
import NIOCore
import NIOPosix
import SandpitCore
import SandpitProtocol

/// NIO decoder wrapping `LineFramer`.
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = LineFramer.Item
    var framer: LineFramer

    init(maxLineBytes: Int) { framer = LineFramer(maxLineBytes: maxLineBytes) }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes > 0 else { return .needMoreData }
        let items = buffer.readWithUnsafeReadableBytes { ptr in
            (ptr.count, framer.push(UnsafeRawBufferPointer(ptr)))
        }
        for i in items { context.fireChannelRead(wrapInboundOut(i)) }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        _ = try decode(context: context, buffer: &buffer)
        return .needMoreData
    }
}

/// Writes whole lines to an async channel's outbound side. NIOAsyncWriter
/// applies backpressure: a client that stops reading suspends only the
/// requests writing to it.
struct ChannelOutbound: RPCOutbound {
    let writer: NIOAsyncChannelOutboundWriter<ByteBuffer>

    func send(_ line: String) async throws {
        var buf = ByteBuffer()
        buf.reserveCapacity(line.utf8.count + 1)
        buf.writeString(line)
        buf.writeInteger(UInt8(ascii: "\n"))
        do { try await writer.write(buf) } catch { throw PeerGone("\(error)") }
    }
}

/// Serves one connection (a socket client, or stdin/stdout): each request
/// runs in its own task, so requests are pipelined and answered out of order.
/// When the client stops sending, requests already read are still answered.
enum ConnectionServer {
    /// Request lines at least this long are parsed off the control loop.
    static let bulkLineBytes = 256 << 10
    /// Requests one connection may have in flight. Past it the daemon stops
    /// reading that connection until one ends: a client that sends without
    /// reading its answers stalls itself (its answers wait, unread, in a
    /// bounded number of tasks), not the daemon's memory or other clients.
    static let maxInFlight = 512

    static func serve<S: AsyncSequence & Sendable>(_ inbound: S, out: any RPCOutbound, service: RPCService, peer: Peer, logger: Logger) async throws
    where S.Element == LineFramer.Item {
        // Whatever ends the connection, what it held awake is released.
        defer { service.disconnected(peer) }
        let slots = InFlight(limit: maxInFlight)
        try await withThrowingDiscardingTaskGroup { group in
            for try await item in inbound {
                await slots.acquire()
                switch item {
                case .oversized(let n, let head):
                    defer { slots.release() }
                    try await out.send(RPC.error(id: RPC.idOfTruncatedRequest(head), SandpitError(
                        .requestTooLarge, "request line of \(n)+ bytes exceeds the limit of \(service.limits.maxLineBytes) bytes",
                        details: ["limit": .int(Int64(service.limits.maxLineBytes))])))
                case .line(let bytes) where bytes.count >= bulkLineBytes:
                    // Most likely file contents: parsed and served on the
                    // cooperative pool, so the shared control loop does not
                    // stall for megabytes of JSON.
                    group.addTask(executorPreference: globalConcurrentExecutor) {
                        defer { slots.release() }
                        switch RPC.parse(bytes) {
                        case .failure(let r): try? await out.send(RPC.error(id: r.id, r.error))
                        case .success(let req): await service.handle(req, peer: peer, out: out)
                        }
                    }
                case .line(let bytes):
                    switch RPC.parse(bytes) {
                    case .failure(let r):
                        defer { slots.release() }
                        try await out.send(RPC.error(id: r.id, r.error))
                    case .success(let req):
                        group.addTask {
                            defer { slots.release() }
                            await service.handle(req, peer: peer, out: out)
                        }
                    }
                }
            }
        }
    }

    static func serve(_ conn: NIOAsyncChannel<LineFramer.Item, ByteBuffer>, service: RPCService, peer: Peer, logger: Logger) async {
        do {
            try await conn.executeThenClose { inbound, outbound in
                try await serve(inbound, out: ChannelOutbound(writer: outbound), service: service, peer: peer, logger: logger)
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }
}

/// A counting semaphore for one connection's requests in flight.
final class InFlight: Sendable {
    private let state: Mutex<(free: Int, waiters: [CheckedContinuation<Void, Never>])>
    init(limit: Int) { state = Mutex((limit, [])) }

    func acquire() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.free > 0 { s.free -= 1; return true }
                s.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty { s.free += 1; return nil }
            return s.waiters.removeFirst()
        }
        next?.resume()
    }
}

/// stdin/stdout of any kind (pipe, tty, socket or regular file): a reader
/// thread frames stdin; writes happen in order on a serial queue.
final class StdioConnection: @unchecked Sendable {
    let inFd: Int32
    let outFd: Int32
    let writeQueue = DispatchQueue(label: "sandpit.stdout")
    let items: AsyncThrowingStream<LineFramer.Item, Error>
    private let continuation: AsyncThrowingStream<LineFramer.Item, Error>.Continuation
    private let broken = Atomic<Bool>(false)

    init(inFd: Int32, outFd: Int32, maxLineBytes: Int) {
        self.inFd = inFd
        self.outFd = outFd
        (items, continuation) = AsyncThrowingStream.makeStream(of: LineFramer.Item.self)
        let cont = continuation
        EngineThread.detach {
            var framer = LineFramer(maxLineBytes: maxLineBytes)
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(inFd, $0.baseAddress!, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                for item in framer.push(buf[0..<n]) { cont.yield(item) }
            }
            cont.finish()
        }
    }

    struct Out: RPCOutbound {
        let conn: StdioConnection
        func send(_ line: String) async throws {
            var b = Array(line.utf8)
            b.append(UInt8(ascii: "\n"))
            let bytes = b
            let c = conn
            let ok = await withCheckedContinuation { (k: CheckedContinuation<Bool, Never>) in
                c.writeQueue.async {
                    if c.broken.load(ordering: .relaxed) { k.resume(returning: false); return }
                    var off = 0
                    while off < bytes.count {
                        let n = bytes.withUnsafeBytes { write(c.outFd, $0.baseAddress! + off, $0.count - off) }
                        if n < 0 && errno == EINTR { continue }
                        if n <= 0 { c.broken.store(true, ordering: .relaxed); k.resume(returning: false); return }
                        off += n
                    }
                    k.resume(returning: true)
                }
            }
            if !ok { throw PeerGone("stdout is closed") }
        }
    }
}

public enum Transports {
    static func configure(_ channel: Channel, maxLineBytes: Int) throws -> NIOAsyncChannel<LineFramer.Item, ByteBuffer> {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder(maxLineBytes: maxLineBytes)))
        return try NIOAsyncChannel<LineFramer.Item, ByteBuffer>(
            wrappingChannelSynchronously: channel,
            configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 64),
                                 isOutboundHalfClosureEnabled: false))
    }

    /// JSON-RPC on the process's stdin/stdout. Returns when stdin reaches EOF
    /// and every request read from it has been answered.
    public static func serveStdio(service: RPCService, logger: Logger) async throws {
        signal(SIGPIPE, SIG_IGN)
        let conn = StdioConnection(inFd: 0, outFd: 1, maxLineBytes: service.limits.maxLineBytes)
        try await withTaskExecutorPreference(ControlLoop.executor) {
            try await ConnectionServer.serve(conn.items, out: StdioConnection.Out(conn: conn), service: service,
                                             peer: Peer(uid: Int64(getuid()), admin: true), logger: logger)
        }
    }

    /// SO_PEERCRED of a connected Unix socket.
    static func peerCred(_ channel: Channel) async -> sp_ucred? {
        guard let provider = channel as? SocketOptionProvider else { return nil }
        return try? await provider.unsafeGetSocketOption(level: .socket, name: .init(rawValue: SO_PEERCRED)).get()
    }

    /// JSON-RPC on a Unix socket (mode 0600), many clients at once. Runs until cancelled.
    public static func serveSocket(path: String, service: RPCService, logger: Logger, mode: mode_t = 0o600) async throws {
        let max = service.limits.maxLineBytes
        let server: NIOAsyncChannel<NIOAsyncChannel<LineFramer.Item, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: ControlLoop.loop)
                .serverChannelOption(.backlog, value: 256)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                    channel.eventLoop.makeCompletedFuture { try configure(channel, maxLineBytes: max) }
                }
        } catch {
            throw SandpitError(.unavailable, "cannot listen on \(path): \(error)")
        }
        // The socket is created with the process umask (no write bit for others,
        // so nobody else can connect yet); then it gets its configured mode. The
        // umask is never changed: other threads create files meanwhile.
        chmod(path, mode)
        logger.info("listening", metadata: ["socket": "\(path)"])
        defer { unlink(path) }
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { inbound in
                for try await conn in inbound {
                    group.addTask {
                        // Tenancy rests on the kernel's word for who connected, not on anything the client says.
                        guard let cred = await peerCred(conn.channel) else {
                            logger.warning("dropping a connection without peer credentials")
                            try? await conn.channel.close()
                            return
                        }
                        // The process that connected, pinned now (a pid could be reused later):
                        // where `fd` transfers take the client's descriptors from.
                        let peer = Peer(uid: Int64(cred.uid), admin: cred.uid == geteuid(), pidfd: cred.pid > 0 ? sp_pidfd_open(cred.pid) : -1)
                        await withTaskExecutorPreference(ControlLoop.executor) {
                            await ConnectionServer.serve(conn, service: service, peer: peer, logger: logger)
                        }
                    }
                }
            }
        }
    }
}
