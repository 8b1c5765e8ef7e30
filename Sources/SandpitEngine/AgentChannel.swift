import CSandpit
import NIOCore
import NIOPosix
import SandpitCore

/// One frame of the daemon↔agent protocol (see sp_proto.h).
struct AgentFrame: Sendable {
    var type: UInt8
    var stream: UInt8
    var id: UInt32
    var payload: [UInt8]

    func int32(at offset: Int = 0) -> Int32 {
        guard payload.count >= offset + 4 else { return 0 }
        return payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: Int32.self) }
    }

    func uint64(at offset: Int) -> UInt64 {
        guard payload.count >= offset + 8 else { return 0 }
        return payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
    }

    var text: String { String(decoding: payload, as: UTF8.self) }
}

struct AgentFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = AgentFrame

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= Int(SP_FRAME_HEADER_SIZE),
              let length = buffer.getInteger(at: buffer.readerIndex, endianness: .host, as: UInt32.self) else {
            return .needMoreData
        }
        guard length <= SP_FRAME_MAX_PAYLOAD else { throw SandpitError(.sandboxFailed, "agent sent an oversized frame") }
        guard buffer.readableBytes >= Int(SP_FRAME_HEADER_SIZE) + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let type = buffer.readInteger(as: UInt8.self)!
        let stream = buffer.readInteger(as: UInt8.self)!
        buffer.moveReaderIndex(forwardBy: 2)
        let id = buffer.readInteger(endianness: .host, as: UInt32.self)!
        let payload = buffer.readBytes(length: Int(length))!
        context.fireChannelRead(wrapInboundOut(AgentFrame(type: type, stream: stream, id: id, payload: payload)))
        return .continue
    }
}

/// Delivers frames and the channel's end to a sink on the event loop.
final class AgentInboundHandler: ChannelInboundHandler {
    typealias InboundIn = AgentFrame
    let onFrame: @Sendable (AgentFrame) -> Void
    let onClose: @Sendable (String?) -> Void
    private var closed = false

    init(onFrame: @escaping @Sendable (AgentFrame) -> Void, onClose: @escaping @Sendable (String?) -> Void) {
        self.onFrame = onFrame
        self.onClose = onClose
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        onFrame(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !closed { closed = true; onClose(nil) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !closed { closed = true; onClose("\(error)") }
        context.close(promise: nil)
    }
}

/// The daemon's end of a sandbox's control socket.
final class AgentChannel: Sendable {
    let channel: Channel

    private init(channel: Channel) { self.channel = channel }

    static func open(fd: Int32, onFrame: @escaping @Sendable (AgentFrame) -> Void,
                     onClose: @escaping @Sendable (String?) -> Void) async throws -> AgentChannel {
        let ch = try await NIOPipeBootstrap(group: ControlLoop.loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(AgentFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(AgentInboundHandler(onFrame: onFrame, onClose: onClose))
                }
            }
            .takingOwnershipOfDescriptor(inputOutput: fd)
            .get()
        return AgentChannel(channel: ch)
    }

    func send(type: UInt32, id: UInt32, payload: [UInt8]) {
        var buf = channel.allocator.buffer(capacity: Int(SP_FRAME_HEADER_SIZE) + payload.count)
        buf.writeInteger(UInt32(payload.count), endianness: .host)
        buf.writeInteger(UInt8(type))
        buf.writeInteger(UInt8(0))
        buf.writeInteger(UInt16(0))
        buf.writeInteger(id, endianness: .host)
        buf.writeBytes(payload)
        channel.writeAndFlush(buf, promise: nil)
    }

    func close() {
        channel.close(promise: nil)
    }
}
