#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SandpitCore
import SandpitTestSupport

/// The fs.* methods over the real protocol, and attacks on their path handling.
@Suite(.serialized, .enabled(if: TestEnv.isRoot, "needs root"))
struct FileTests {
    func bytes(_ v: JSONValue?) -> [UInt8] { Base64.decode(v?.stringValue ?? "") ?? [] }

    @Test func textBinaryAppendAndBatchesRoundTrip() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            let w = try c.result("fs.write", ["sandboxId": .string(sb), "path": "notes/today.txt", "text": "héllo\n", "mode": 0o600])
            #expect(w["size"] == 7 && w["woke"] == false)
            let all = (0...255).map { UInt8($0) }
            _ = try c.result("fs.write", ["sandboxId": .string(sb), "path": "/home/user/bin.dat", "data": .string(Base64.encode(all))])
            #expect(bytes(try c.result("fs.read", ["sandboxId": .string(sb), "path": "bin.dat"])["data"]) == all)
            let part = try c.result("fs.read", ["sandboxId": .string(sb), "path": "bin.dat", "offset": 250, "length": 100])
            #expect(bytes(part["data"]) == Array(all[250...]) && part["eof"] == true && part["size"] == 256)
            _ = try c.result("fs.write", ["sandboxId": .string(sb), "path": "notes/today.txt", "text": "more\n", "append": true])
            // The sandbox sees the files as its own, owned by its user, with the mode asked for.
            let seen = try a.sh(sb, "cat notes/today.txt; stat -c '%U %a' notes/today.txt bin.dat")
            #expect(seen.stdout == "héllo\nmore\nuser 600\nuser 644\n")
            // A batch lands whole, or not at all.
            let ok = try c.result("fs.writeMany", ["sandboxId": .string(sb), "files": [
                ["path": "batch/a.py", "text": "print(1)"], ["path": "batch/sub/b.py", "text": "print(2)"]]])
            #expect(ok["written"] == 2)
            _ = try a.sh(sb, "mkdir -p /home/user/batch/taken")
            let bad = try c.call("fs.writeMany", ["sandboxId": .string(sb), "files": [
                ["path": "batch/new.txt", "text": "x"], ["path": "batch/taken", "text": "y"]]])["error"]
            #expect(bad?["data"]?["code"] == "conflict")
            #expect(try a.sh(sb, "ls -A batch | sort | tr '\\n' ' '").stdout == "a.py sub taken ", "nothing of the failed batch is left")
            // mkdir, stat, rename, remove.
            _ = try c.result("fs.mkdir", ["sandboxId": .string(sb), "path": "x/y/z", "recursive": true])
            #expect(try c.result("fs.stat", ["sandboxId": .string(sb), "path": "x/y/z"])["type"] == "dir")
            _ = try c.result("fs.rename", ["sandboxId": .string(sb), "path": "bin.dat", "to": "x/y/z/moved.dat"])
            #expect(try c.call("fs.stat", ["sandboxId": .string(sb), "path": "bin.dat"])["error"]?["data"]?["code"] == "not_found")
            #expect(try c.call("fs.remove", ["sandboxId": .string(sb), "path": "x"])["error"]?["data"]?["code"] == "conflict", "not empty")
            _ = try c.result("fs.remove", ["sandboxId": .string(sb), "path": "x", "recursive": true])
            #expect(try a.sh(sb, "test -e x || echo gone").stdout == "gone\n")
        }
    }

    @Test func listingPagesThroughTenThousandEntries() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            _ = try a.sh(sb, "mkdir many && cd many && seq -w 10000 | xargs touch")
            var names: [String] = []
            var cursor: JSONValue?
            var pages = 0
            repeat {
                var p: JSONObject = ["sandboxId": .string(sb), "path": "many", "limit": 1500]
                if let cursor { p["cursor"] = cursor }
                let r = try c.result("fs.list", .object(p))
                names += r["entries"]!.arrayValue!.compactMap { $0["name"]?.stringValue }
                cursor = r["nextCursor"]
                pages += 1
            } while cursor != nil
            #expect(pages == 7)
            #expect(names.count == 10_000 && Set(names).count == 10_000)
            #expect(names == names.sorted())
            let rec = try c.result("fs.list", ["sandboxId": .string(sb), "path": "/home/user", "recursive": true, "limit": 10000])
            #expect(rec["entries"]!.arrayValue!.count == 10_000, "paginated even when recursive")
        }
    }

    /// A file on the host that no request may read or write; removed after the test.
    func withHostMarker(_ name: String, _ body: (String) throws -> Void) throws {
        let marker = "/tmp/sandpit-\(name)-marker-\(getpid())"
        try "HOST SECRET\n".write(toFile: marker, atomically: true, encoding: .utf8)
        defer { unlink(marker) }
        try body(marker)
    }

    @Test func pathsNeverLeaveTheSandbox() throws {
        try withHostMarker("host") { marker in
            try Arena.with { a in
                let c = a.client, sb = try a.sandbox()
                let other = try a.sandbox()
                _ = try a.sh(other, "echo other-sandbox > /home/user/mine")
                _ = try a.sh(sb, """
                    cd /home/user
                    ln -s \(marker) abs; ln -s ../../..\(marker) rel; mkdir d; ln -s / d/up
                    ln -s /proc/1/root/etc/hostname magic; ln -s /proc/self/cwd cwd
                    """)
                func read(_ path: String) throws -> JSONValue { try c.call("fs.read", ["sandboxId": .string(sb), "path": .string(path)]) }
                for p in ["abs", "rel", "d/up\(marker)", "/../../..\(marker)", "../../..\(marker)", "d/up/../..\(marker)"] {
                    let r = try read(p)
                    #expect(r["error"]?["data"]?["code"] == "not_found", "\(p) resolved inside the sandbox (no such file there): \(r)")
                }
                for p in ["magic", "cwd/abs", "/proc/self/root/etc/hostname", "/proc/1/cwd/abs"] {
                    let r = try read(p)
                    #expect(r["result"] == nil, "\(p): magic links are refused: \(r)")
                }
                // The other sandbox's files are not reachable by any path.
                let otherPath = "/proc/../../tmp/../home/user/mine"
                #expect(try read(otherPath)["error"]?["data"]?["code"] == "not_found")
                // Writes through a symlink land inside the sandbox, never on the host.
                _ = try a.sh(sb, "ln -s \(marker) /home/user/wlink")
                _ = try c.result("fs.write", ["sandboxId": .string(sb), "path": "wlink", "text": "overwritten"])
                #expect(try String(contentsOfFile: marker, encoding: .utf8) == "HOST SECRET\n")
                #expect(try a.sh(sb, "cat \(marker)").stdout == "overwritten", "the link's target inside the sandbox got it")
                // A NUL, an empty path and a bad encoding are invalid params.
                #expect(try c.call("fs.read", ["sandboxId": .string(sb), "path": "a\u{0}b"])["error"]?["data"]?["code"] == "invalid_params")
                #expect(try c.call("fs.read", ["sandboxId": .string(sb), "path": ""])["error"]?["data"]?["code"] == "invalid_params")
                #expect(try c.call("fs.read", ["sandboxId": .string(sb), "pathBase64": "%%%"])["error"]?["data"]?["code"] == "invalid_params")
            }
        }
    }

    @Test func aSymlinkSwapRaceFromInsideNeverEscapes() throws {
        try withHostMarker("race") { marker in
            try Arena.with { a in
                let c = a.client, sb = try a.sandbox()
                // The sandbox flips /home/user/swap between a real directory and a symlink to / as fast as it can.
                _ = try c.result("exec.run", ["sandboxId": .string(sb), "background": true, "shell": .string("""
                    cd /home/user; mkdir -p real/tmp; echo inside > real/tmp/\((marker as NSString).lastPathComponent)
                    ln -sfn / link
                    while :; do mv -T real swap 2>/dev/null; mv -T swap real 2>/dev/null; ln -sfn / swap 2>/dev/null; rm -f swap; done
                    """)])
                for i in 0..<2000 {
                    let r = try c.call("fs.read", ["sandboxId": .string(sb), "path": .string("/home/user/swap\(marker)")])
                    if let d = r["result"]?["data"] {
                        let text = String(decoding: bytes(d), as: UTF8.self)
                        #expect(text == "inside\n" || text == "written", "request \(i) read \(text): only the sandbox's own file is reachable")
                    }
                    if i % 2 == 0 {
                        _ = try c.call("fs.write", ["sandboxId": .string(sb), "path": .string("/home/user/swap\(marker)"), "text": "written"])
                    }
                }
                #expect(try String(contentsOfFile: marker, encoding: .utf8) == "HOST SECRET\n", "the host file was never written")
            }
        }
    }

    @Test func specialFilesAreRefusedAndOddNamesRoundTrip() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            _ = try a.sh(sb, "mkfifo /home/user/fifo; python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('/home/user/sock')\"")
            for p in ["/home/user/fifo", "/dev/null", "/dev/zero", "/home/user/sock"] {
                let r = try c.call("fs.read", ["sandboxId": .string(sb), "path": .string(p)])
                #expect(r["error"]?["data"]?["code"] == "invalid_params", "\(p): \(r)")
                let w = try c.call("fs.write", ["sandboxId": .string(sb), "path": .string(p), "text": "x"])
                #expect(w["error"] != nil, "\(p) is not written: \(w)")
            }
            // A name that is not UTF-8 round-trips as bytes.
            let raw: [UInt8] = Array("/home/user/caf".utf8) + [0xE9, 0xFF] + Array(".txt".utf8)
            _ = try c.result("fs.write", ["sandboxId": .string(sb), "pathBase64": .string(Base64.encode(raw)), "text": "latin-1"])
            let listed = try c.result("fs.list", ["sandboxId": .string(sb), "path": "/home/user"])["entries"]!.arrayValue!
            let odd = try #require(listed.first { $0["pathEncoding"] == "base64" })
            #expect(bytes(odd["path"]) == raw)
            let back = try c.result("fs.read", ["sandboxId": .string(sb), "pathBase64": odd["path"]!])
            #expect(String(decoding: bytes(back["data"]), as: UTF8.self) == "latin-1")
        }
    }

    @Test func pausedAndHibernatedSandboxesAreReadWithoutWaking() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            _ = try a.sh(sb, "echo kept > /home/user/kept.txt")
            _ = try c.result("sandbox.pause", ["sandboxId": .string(sb)])
            let p = try c.result("fs.read", ["sandboxId": .string(sb), "path": "kept.txt"])
            #expect(bytes(p["data"]) == Array("kept\n".utf8) && p["woke"] == false)
            #expect(try c.result("sandbox.get", ["sandboxId": .string(sb)])["state"] == "paused")
            _ = try c.result("sandbox.hibernate", ["sandboxId": .string(sb)])
            let h = try c.result("fs.read", ["sandboxId": .string(sb), "path": "/home/user/kept.txt"])
            #expect(bytes(h["data"]) == Array("kept\n".utf8) && h["woke"] == false && h["fromCheckpoint"] == true)
            #expect(try c.result("fs.list", ["sandboxId": .string(sb), "path": "/home/user"])["entries"]!.arrayValue!.contains { $0["name"] == "kept.txt" })
            #expect(try c.result("sandbox.get", ["sandboxId": .string(sb)])["state"] == "hibernated")
            let w = try c.result("fs.write", ["sandboxId": .string(sb), "path": "new.txt", "text": "x"])
            #expect(w["woke"] == true)
            #expect(try c.result("sandbox.get", ["sandboxId": .string(sb)])["state"] == "running")
        }
    }

    @Test func uploadsAndDownloadsStreamInChunksAndADroppedUploadLeavesNothing() throws {
        try Arena.with { a in
            let c = a.client, sb = try a.sandbox()
            let chunk = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let up = try c.result("fs.upload", ["sandboxId": .string(sb), "path": "data/big.bin"])["uploadId"]!
            // Chunks may arrive out of order: each says where it goes.
            for k in [2, 0, 3, 1] {
                _ = try c.result("fs.uploadChunk", ["uploadId": up, "offset": .int(Int64(k << 20)), "data": .string(Base64.encode(chunk))])
            }
            #expect(try a.sh(sb, "test -e data/big.bin || echo absent").stdout == "absent\n", "not under its name before commit")
            #expect(try c.result("fs.uploadCommit", ["uploadId": up])["size"] == .int(4 << 20))
            #expect(try a.sh(sb, "ls -A data").stdout == "big.bin\n")
            c.notifications = []
            let r = try c.result("fs.download", ["sandboxId": .string(sb), "path": "data/big.bin", "chunkBytes": 1_000_000])
            let parts = c.notifications.compactMap { $0["method"] == "fs.chunk" ? $0["params"] : nil }
            #expect(r["size"] == .int(4 << 20) && r["chunks"] == 5 && parts.count == 5)
            var whole: [UInt8] = []
            for p in parts { whole += bytes(p["data"]) }
            #expect(whole == chunk + chunk + chunk + chunk)
            // A client that goes away mid-upload leaves no partial file behind.
            let c2 = try a.daemon.connect()
            let up2 = try c2.result("fs.upload", ["sandboxId": .string(sb), "path": "data/partial.bin"])["uploadId"]!
            _ = try c2.result("fs.uploadChunk", ["uploadId": up2, "offset": 0, "data": .string(Base64.encode(chunk))])
            c2.close()
            #expect(eventually { (try? a.sh(sb, "ls -A data").stdout) == "big.bin\n" }, "the temporary file of the dropped upload is removed")
            #expect(try c.call("fs.uploadCommit", ["uploadId": up2])["error"]?["data"]?["code"] == "not_found")
        }
    }

    @Test func watchesReportChangesInOrderUntilUnwatchedOrTheSandboxGoes() throws {
        try Arena.with { a in
            // Changes are made on one connection and watched on another.
            let c = a.client, sb = try a.sandbox(), wc = try a.daemon.connect()
            _ = try c.result("fs.mkdir", ["sandboxId": .string(sb), "path": "w/old", "recursive": true])
            let w = try wc.result("fs.watch", ["sandboxId": .string(sb), "path": "w", "recursive": true])
            let watchId = w["watchId"]!
            wc.notifications = []
            _ = try a.sh(sb, "cd w && echo a > f && mv f g && mkdir -p new/deep && echo b > new/deep/h && echo c > old/i && rm g && rm -r new")
            // Events of a shell's changes arrive in the order they happened.
            func events() -> [String] {
                _ = try? wc.call("server.info")
                return wc.notifications.compactMap { n -> String? in
                    guard n["method"] == "fs.event", let p = n["params"], p["watchId"] == watchId else { return nil }
                    let from = p["from"]?.stringValue.map { " from " + $0 } ?? ""
                    return "\(p["type"]?.stringValue ?? "") \(p["path"]?.stringValue ?? "")\(from)"
                }
            }
            #expect(eventually { events().contains("deleted /home/user/w/new") })
            let seen = events()
            let expected = ["created /home/user/w/f", "modified /home/user/w/f", "renamed /home/user/w/g from /home/user/w/f",
                            "created /home/user/w/new", "created /home/user/w/new/deep/h", "created /home/user/w/old/i",
                            "deleted /home/user/w/g", "deleted /home/user/w/new/deep/h", "deleted /home/user/w/new"]
            var at = 0
            for e in seen where at < expected.count && e == expected[at] { at += 1 }
            #expect(at == expected.count, "missing or out of order: \(expected[at...].first ?? "") in \(seen)")
            // After fs.unwatch nothing more arrives (but an `ended` event).
            #expect(try wc.result("fs.unwatch", ["watchId": watchId])["stopped"] == true)
            wc.notifications = []
            _ = try a.sh(sb, "touch w/after")
            usleep(200_000)
            #expect(!events().contains { $0.contains("after") })
            #expect(try wc.call("fs.unwatch", ["watchId": watchId])["error"]?["data"]?["code"] == "not_found")
            // A watch ends when the watched directory goes, and when the sandbox does.
            let w2 = try wc.result("fs.watch", ["sandboxId": .string(sb), "path": "/home/user/w/old"])["watchId"]!
            let w3 = try wc.result("fs.watch", ["sandboxId": .string(sb), "path": "/tmp"])["watchId"]!
            wc.notifications = []
            _ = try a.sh(sb, "rm -r w/old")
            func ended(_ id: JSONValue) -> Bool {
                _ = try? wc.call("server.info")
                return wc.notifications.contains { $0["method"] == "fs.event" && $0["params"]?["watchId"] == id && $0["params"]?["type"] == "ended" }
            }
            #expect(eventually { ended(w2) })
            _ = try c.result("sandbox.hibernate", ["sandboxId": .string(sb)])
            #expect(eventually { ended(w3) })
            // Watches are for live sandboxes, and paths stay inside them.
            #expect(try wc.call("fs.watch", ["sandboxId": .string(sb), "path": "/tmp"])["error"]?["data"]?["code"] == "invalid_state")
            let sb2 = try a.sandbox()
            #expect(try wc.call("fs.watch", ["sandboxId": .string(sb2), "path": "/proc/1/root"])["error"]?["data"]?["code"] == "invalid_params")
            #expect(try wc.call("fs.watch", ["sandboxId": .string(sb2), "path": "/etc/hostname"])["error"] != nil, "files are not directories")
        }
    }

    /// 2 GiB up and back down through the socket in 8 MiB chunks, checked
    /// byte for byte with sha256sum, while the daemon's peak memory stays a
    /// small fraction of the file.
    @Test func twoGiBStreamUpAndDownWithTheDaemonsMemoryBounded() throws {
        try Arena.with(extraArgs: ["--storage-gib", "8"]) { a in
            let c = a.client, sb = try a.sandbox()
            let dir = try TestEnv.scratch("twogib")
            defer { _ = Host.sh("rm -rf '\(dir)'") }
            #expect(Host.sh("head -c 2G /dev/urandom > '\(dir)/ref.bin'").status == 0)
            let refSum = Host.sh("sha256sum < '\(dir)/ref.bin'").output.prefix(64)
            let pid = a.daemon.process.processIdentifier
            func peakRSS() -> Int {
                let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
                let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
                return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
            }
            let before = peakRSS()

            let up = try c.result("fs.upload", ["sandboxId": .string(sb), "path": "big.bin"])["uploadId"]!
            let fd = open(dir + "/ref.bin", O_RDONLY)
            var chunk = [UInt8](repeating: 0, count: 8 << 20)
            var offset = 0
            while true {
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                guard n > 0 else { break }
                _ = try c.result("fs.uploadChunk", ["uploadId": up, "offset": .int(Int64(offset)), "data": .string(Base64.encode(Array(chunk[0..<n])))])
                offset += n
            }
            close(fd)
            #expect(try c.result("fs.uploadCommit", ["uploadId": up])["size"] == .int(2 << 30))
            #expect(try a.sh(sb, "sha256sum < big.bin").stdout.prefix(64) == refSum)

            let out = open(dir + "/down.bin", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            var received = 0
            c.onNotification = { n in
                guard n["method"] == "fs.chunk", let data = Base64.decode(n["params"]?["data"]?.stringValue ?? "") else { return }
                received += data.count
                _ = data.withUnsafeBytes { write(out, $0.baseAddress!, $0.count) }
            }
            let r = try c.call("fs.download", ["sandboxId": .string(sb), "path": "big.bin", "chunkBytes": .int(8 << 20)], timeout: 600)
            c.onNotification = nil
            close(out)
            #expect(r["result"]?["size"] == .int(2 << 30) && received == 2 << 30)
            #expect(Host.sh("sha256sum < '\(dir)/down.bin'").output.prefix(64) == refSum)
            let grew = peakRSS() - before
            #expect(grew < 512 << 20, "the daemon's peak RSS grew by \(grew >> 20) MiB moving a 2 GiB file")
            _ = try c.result("fs.remove", ["sandboxId": .string(sb), "path": "big.bin"])
        }
    }
}
