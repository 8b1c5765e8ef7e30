import Testing
@testable import SandpitCore

@Suite struct BuildSpecTests {
    @Test func parsesTheSubsetWithContinuationsAndComments() throws {
        let spec = try BuildSpec.parse("""
            # a data-science template
            FROM default
            ENV LANG=C.UTF-8 GREETING="hello world"
            WORKDIR /home/user/work
            RUN echo one \\
                && echo two
            RUN ["python3", "-c", "print(1)"]
            COPY data/a.csv data/b.csv /home/user/work/
            USER user
            ENV LEGACY some value
            """)
        #expect(spec.base == .defaultTemplate)
        #expect(spec.steps.map(\.number) == [3, 4, 5, 7, 8, 9, 10])
        #expect(spec.steps[0].step == .env(["LANG": "C.UTF-8", "GREETING": "hello world"]))
        #expect(spec.steps[2].step == .run(argv: ["/bin/sh", "-c", "echo one      && echo two"]))
        #expect(spec.steps[3].step == .run(argv: ["python3", "-c", "print(1)"]))
        #expect(spec.steps[4].step == .copy(sources: ["data/a.csv", "data/b.csv"], dest: "/home/user/work/"))
        #expect(spec.steps[6].step == .env(["LEGACY": "some value"]))
    }

    @Test func preloadListsModulesAndTravelsInTheConfig() throws {
        let spec = try BuildSpec.parse("FROM default\nPRELOAD numpy, pandas matplotlib.pyplot _private")
        #expect(spec.steps[0].step == .preload(["numpy", "pandas", "matplotlib.pyplot", "_private"]))
        #expect(spec.steps[0].step.cacheText == "PRELOAD numpy pandas matplotlib.pyplot _private")
        var config = ImageConfig()
        config.preload = ["numpy", "matplotlib.pyplot"]
        #expect(ImageConfig(json: config.json) == config)
        #expect(ImageConfig(json: ImageConfig().json)?.preload == [])
        for bad in ["", "a..b", "1x", "a.", "os;rm", "x-y"] { #expect(!ImageConfig.isModuleName(bad), "\(bad)") }
    }

    @Test func baseKinds() throws {
        #expect(try BuildSpec.parse("FROM py:3.12").base == .template(name: "py", tag: "3.12"))
        #expect(try BuildSpec.parse("FROM py").base == .template(name: "py", tag: "latest"))
        #expect(try BuildSpec.parse("FROM /tmp/rootfs.tar.gz").base == .archive(path: "/tmp/rootfs.tar.gz"))
        #expect(try BuildSpec.parse("FROM ./image-layout").base == .ociLayout(path: "./image-layout"))
        // Registry images: a registry host, a path or a digest makes it one; a bare NAME[:TAG] stays a template first.
        #expect(try BuildSpec.parse("FROM ghcr.io/org/img:1").base == .image(reference: "ghcr.io/org/img:1"))
        #expect(try BuildSpec.parse("FROM library/python").base == .image(reference: "library/python"))
        #expect(try BuildSpec.parse("FROM python@sha256:" + String(repeating: "a", count: 64)).base
                == .image(reference: "python@sha256:" + String(repeating: "a", count: 64)))
        #expect(try BuildSpec.parse("FROM python:3.12-slim").base == .template(name: "python", tag: "3.12-slim"))
    }

    @Test func errorsNameTheLine() {
        for (text, line) in [("RUN true", 1), ("FROM default\nADD x /", 2), ("FROM default\n\nWORKDIR relative", 3),
                             ("FROM default\nCOPY ../secret /x", 2), ("FROM default\nFROM other", 2), ("FROM default\nENV A=\"open", 2),
                             ("FROM Bad:Name!", 1), ("FROM default\nRUN [\"unterminated\"", 2),
                             ("FROM default\nPRELOAD numpy os;rm", 2), ("FROM default\n\nPRELOAD 3d", 3)] {
            do {
                _ = try BuildSpec.parse(text)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.details["line"] == .int(Int64(line)), "\(text): \(error.message)")
            }
        }
        #expect(throws: SandpitError.self) { try BuildSpec.parse("# only a comment\n") }
    }

    @Test func cacheTextIsCanonical() {
        #expect(BuildSpec.Step.env(["B": "2", "A": "1"]).cacheText == BuildSpec.Step.env(["A": "1", "B": "2"]).cacheText)
        #expect(BuildSpec.Step.run(argv: ["/bin/sh", "-c", "x"]).cacheText != BuildSpec.Step.run(argv: ["/bin/sh", "-c", "y"]).cacheText)
    }

    @Test func imageReferencesReadAsDockerReadsThem() throws {
        let hub = try ImageReference.parse("python:3.12-slim")
        #expect(hub.registry == "docker.io" && hub.apiHost == "registry-1.docker.io" && hub.repository == "library/python" && hub.tag == "3.12-slim")
        #expect(hub.description == "docker.io/library/python:3.12-slim" && hub.templateName == ("python", "3.12-slim"))
        #expect(try ImageReference.parse("python").tag == "latest")
        #expect(try ImageReference.parse("org/tool").repository == "org/tool")
        let own = try ImageReference.parse("127.0.0.1:5000/team/mini:1")
        #expect(own.registry == "127.0.0.1:5000" && own.apiHost == "127.0.0.1:5000" && own.repository == "team/mini" && own.reference == "1")
        #expect(try ImageReference.parse("localhost/x").registry == "localhost")
        let digest = "sha256:" + String(repeating: "0f", count: 32)
        let pinned = try ImageReference.parse("ghcr.io/a/b:2@" + digest)
        #expect(pinned.digest == digest && pinned.tag == "2" && pinned.reference == digest)
        #expect(try ImageReference.parse("x@" + digest).tag == nil)
        for bad in ["", "Python", "a//b", "x:", "x@sha256:abc", "x@md5:" + String(repeating: "0", count: 64), "/x", "x y", "x:-tag", "ghcr.io/"] {
            #expect(throws: SandpitError.self, "\(bad)") { try ImageReference.parse(bad) }
        }
        #expect(ImageReference.isExplicit("ghcr.io/a") && ImageReference.isExplicit("a@" + digest) && !ImageReference.isExplicit("python:3"))
    }

    @Test func registryChallengesParse() {
        let p = RegistryChallenge.parameters(#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#)
        #expect(p == ["realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/python:pull"])
        #expect(RegistryChallenge.parameters("Basic realm=x") == ["realm": "x"])
        #expect(RegistryChallenge.parameters("Bearer") == [:])
    }
}
