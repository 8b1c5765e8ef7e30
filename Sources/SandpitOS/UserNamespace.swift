#if canImport(Glibc)
import Glibc
#endif
import CSandpit

/// The id range a sandbox's user namespace maps onto. Sandbox uid 0 is host
/// `hostBase`, never host root; `count` ids are mapped.
public struct IDMapping: Sendable, Equatable {
    public var hostBase: UInt32
    public var count: UInt32

    public init(hostBase: UInt32, count: UInt32) {
        self.hostBase = hostBase
        self.count = count
    }

    public func hostID(_ inside: UInt32) -> UInt32 { hostBase + inside }

    /// Writes uid_map and gid_map for `pid` (the daemon holds CAP_SETUID in the
    /// parent namespace, so setgroups stays allowed inside for dropping groups).
    public func apply(to pid: Int32) throws(OSError) {
        let line = "0 \(hostBase) \(count)\n"
        try FS.writeFile("/proc/\(pid)/uid_map", line)
        try FS.writeFile("/proc/\(pid)/gid_map", line)
    }

    /// A user namespace with this mapping and nothing in it, for idmapped mounts.
    public func namespace() throws(OSError) -> FileDescriptor {
        FileDescriptor(try sys("user namespace for an id map") { sp_idmap_userns(hostBase, count) })
    }
}
