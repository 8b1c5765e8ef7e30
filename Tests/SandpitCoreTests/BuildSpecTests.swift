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
}
