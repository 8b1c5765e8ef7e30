#if canImport(Glibc)
import Glibc
#endif
import Logging
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
            (ptr.count, framer.push(UnsafeRawBufferPointer(ptr).bindMemory(to: UInt8.self)))
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
        try await writer.write(buf)
    }
}

/// Serves one connection (a socket client, or stdin/stdout): each request
/// runs in its own task, so requests are pipelined and answered out of order.
enum ConnectionServer {
    static func serve(_ conn: NIOAsyncChannel<LineFramer.Item, ByteBuffer>, service: RPCService, peer: Peer, logger: Logger) async {
        do {
            try await conn.executeThenClose { inbound, outbound in
                let out = ChannelOutbound(writer: outbound)
                try await withThrowingDiscardingTaskGroup { group in
                    for try await item in inbound {
                        switch item {
                        case .oversized(let n):
                            try await out.send(RPC.error(id: .null, SandpitError(
                                .requestTooLarge, "request line of \(n)+ bytes exceeds the limit of \(service.limits.maxLineBytes) bytes",
                                details: ["limit": .int(Int64(service.limits.maxLineBytes))])))
                        case .line(let bytes):
                            switch RPC.parse(bytes) {
                            case .failure(let r):
                                try await out.send(RPC.error(id: r.id, r.error))
                            case .success(let req):
                                group.addTask {
                                    await service.handle(req, peer: peer, out: out)
                                }
                            }
                        }
                    }
                    // The client closed its sending side: finish what it asked for, then close.
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
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
        let input = dup(0), output = dup(1)
        guard input >= 0, output >= 0 else { throw SandpitError(.unavailable, "cannot duplicate stdin/stdout") }
        let max = service.limits.maxLineBytes
        let conn: NIOAsyncChannel<LineFramer.Item, ByteBuffer>
        do {
            conn = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .takingOwnershipOfDescriptors(input: input, output: output) { channel in
                    channel.eventLoop.makeCompletedFuture { try configure(channel, maxLineBytes: max) }
                }
        } catch {
            throw SandpitError(.unavailable, "stdin/stdout must be pipes, sockets or a terminal for `sandpit serve` (\(error)); use --socket for a daemon")
        }
        await ConnectionServer.serve(conn, service: service, peer: Peer(uid: Int64(getuid())), logger: logger)
    }

    /// JSON-RPC on a Unix socket (mode 0600), many clients at once. Runs until cancelled.
    public static func serveSocket(path: String, service: RPCService, logger: Logger, mode: mode_t = 0o600) async throws {
        let max = service.limits.maxLineBytes
        let old = umask(0o177)
        let server: NIOAsyncChannel<NIOAsyncChannel<LineFramer.Item, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                    channel.eventLoop.makeCompletedFuture { try configure(channel, maxLineBytes: max) }
                }
            umask(old)
        } catch {
            umask(old)
            throw SandpitError(.unavailable, "cannot listen on \(path): \(error)")
        }
        chmod(path, mode)
        logger.info("listening", metadata: ["socket": "\(path)"])
        defer { unlink(path) }
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { inbound in
                for try await conn in inbound {
                    let uid = peerUID(conn.channel)
                    group.addTask {
                        await ConnectionServer.serve(conn, service: service, peer: Peer(uid: uid), logger: logger)
                    }
                }
            }
        }
    }

    static func peerUID(_ channel: Channel) -> Int64 {
        // Peer credentials are read when tenancy needs them; -1 means unknown.
        -1
    }
}
