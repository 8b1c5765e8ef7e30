import Testing
@testable import SandpitCore

struct TemplateModelTests {
    @Test func sha256MatchesTheStandardVectors() {
        #expect(SHA256.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // Two blocks (56 bytes forces the length into a second block).
        #expect(SHA256.hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hex(String(repeating: "a", count: 1000)) == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    @Test func usersResolveAgainstTheTemplatesAccounts() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:u:/home/user:/bin/sh\napp:x:1500:1600::/srv/app:/bin/sh\n"
        let group = "root:x:0:\nuser:x:1000:\nstaff:x:50:\n"
        #expect(ImageConfig.resolveUser("root", passwd: passwd, group: group).map { [$0.uid, $0.gid] } == [0, 0])
        #expect(ImageConfig.resolveUser("app", passwd: passwd, group: group)?.home == "/srv/app")
        #expect(ImageConfig.resolveUser("app:staff", passwd: passwd, group: group).map { [$0.uid, $0.gid] } == [1500, 50])
        #expect(ImageConfig.resolveUser("1234:99", passwd: passwd, group: group).map { [$0.uid, $0.gid] } == [1234, 99])
        #expect(ImageConfig.resolveUser("nobody-here", passwd: passwd, group: group) == nil)
        #expect(ImageConfig.resolveUser("user:nogroup", passwd: passwd, group: group) == nil)
        #expect(ImageConfig.resolveUser("70000", passwd: passwd, group: group) == nil, "outside the sandbox's id range")
    }

    @Test func configRoundTripsThroughJSON() {
        let c = ImageConfig(base: .rootfs, env: ["A": "1", "PATH": "/bin"], workdir: "/data", user: "app", uid: 1500, gid: 1600, home: "/srv/app")
        #expect(ImageConfig(json: c.json) == c)
    }

    @Test func templateReferencesDefaultTheTag() throws {
        #expect(try TemplateRef.parse("tools") == ("tools", "latest"))
        #expect(try TemplateRef.parse("tools:v2") == ("tools", "v2"))
        for bad in ["Tools", "tools:", ":v1", "a b", "x:y:z", String(repeating: "a", count: 65)] {
            #expect(throws: SandpitError.self, "\(bad)") { _ = try TemplateRef.parse(bad) }
        }
    }
}
