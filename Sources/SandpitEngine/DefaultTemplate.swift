#if canImport(Glibc)
import Glibc
#endif
import SandpitCore
import SandpitOS

/// The `default` template: the host's /usr (mounted read-only into every
/// sandbox), the usual merged-/usr links, and a small generated /etc. It is
/// assembled once into the store and reused; sandboxes never copy it.
public enum DefaultTemplate {
    /// Bump when the layout changes; an older assembly is rebuilt.
    static let version = "4"

    /// Host /etc entries that programs under /usr expect. Nothing secret:
    /// no shadow files, keys or machine ids (so `ssl/private`, where hosts
    /// keep TLS keys, stays behind: only the public certificates and the
    /// OpenSSL configuration go in). Entries the daemon's user cannot read
    /// are left out.
    static let hostEtc = ["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl/certs", "ssl/openssl.cnf", "ca-certificates",
                          "ca-certificates.conf", "python3", "python3.11", "bash.bashrc", "profile", "inputrc",
                          "mime.types", "localtime", "timezone", "debian_version", "os-release", "protocols",
                          "services", "login.defs", "bindresvport.blacklist", "gai.conf", "magic", "magic.mime",
                          "xattr.conf", "pam.conf", "terminfo", "vim", "skel", "environment", "shells"]

    /// Returns the layer directory, assembling it first if needed.
    public static func ensure(storeRoot: String, ids: IDMapping) throws -> String {
        let dir = storeRoot + "/templates/default"
        let layer = dir + "/rootfs"
        if (try? FS.readText(dir + "/VERSION")) == version && FS.isDirectory(layer) { return layer }
        try FS.mkdirs(storeRoot + "/templates")
        let tmp = dir + ".partial"
        try FS.removeTree(tmp)
        try FS.mkdir(tmp)
        let root = tmp + "/rootfs"
        try assemble(root, ids: ids)
        try FS.writeFile(tmp + "/VERSION", version)
        try FS.removeTree(dir)
        _ = try sys("rename", path: dir) { rename(tmp, dir) }
        return layer
    }

    static func assemble(_ root: String, ids: IDMapping) throws {
        try FS.mkdir(root)
        for link in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink("/" + link, &buf, buf.count - 1)
            if n > 0 { try FS.symlink(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self), at: root + "/" + link) }
        }
        for d in ["usr", "proc", "dev", "sys", "run", "mnt", "opt", "srv", "etc", "home", "var", "var/log", "var/lib", "var/cache"] {
            try FS.mkdir(root + "/" + d)
        }
        try FS.mkdir(root + "/root", mode: 0o700)
        for d in ["tmp", "var/tmp"] {
            try FS.mkdir(root + "/" + d)
            try FS.chmod(root + "/" + d, 0o1777)
        }
        try FS.mkdir(root + "/home/user", mode: 0o755)
        try FS.mkdir(root + "/etc/ssl")
        for e in hostEtc where FS.exists("/etc/" + e) && access("/etc/" + e, R_OK) == 0 {
            try HostCommand.run(["cp", "-a", "--no-preserve=ownership", "/etc/" + e, root + "/etc/" + e])
        }
        let etc = root + "/etc"
        try FS.writeFile(etc + "/passwd", """
            root:x:0:0:root:/root:/bin/bash
            user:x:1000:1000:Sandbox user:/home/user:/bin/bash
            nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin

            """)
        try FS.writeFile(etc + "/group", """
            root:x:0:
            tty:x:5:
            users:x:100:user
            user:x:1000:
            nogroup:x:65534:

            """)
        try FS.writeFile(etc + "/hostname", "sandpit\n")
        try FS.writeFile(etc + "/hosts", "127.0.0.1\tlocalhost sandpit\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        try FS.writeFile(etc + "/resolv.conf", "# no network in this sandbox\n")
        try FS.writeFile(etc + "/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")
        try FS.writeFile(root + "/home/user/.bashrc", "PS1='\\u@sandpit:\\w\\$ '\n")
        try FS.writeFile(root + "/home/user/.profile", "[ -f ~/.bashrc ] && . ~/.bashrc\n")
        // Everything belongs to the sandbox's root, except the user's home.
        try chownTree(root, uid: ids.hostID(0), gid: ids.hostID(0))
        try chownTree(root + "/home/user", uid: ids.hostID(1000), gid: ids.hostID(1000))
    }

    static func chownTree(_ path: String, uid: UInt32, gid: UInt32) throws {
        try FS.chown(path, uid: uid, gid: gid)
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return }
        for n in FS.listDirectory(path) { try chownTree(path + "/" + n, uid: uid, gid: gid) }
    }
}
