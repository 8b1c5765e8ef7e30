/// A template build spec: the Dockerfile subset Sandpit builds from
/// (`FROM`, `RUN`, `COPY`, `ENV`, `WORKDIR`, `USER`). Parsing is pure; errors
/// name the line. Comments (`#`), blank lines and backslash continuations are
/// handled as Docker does for these instructions.
public struct BuildSpec: Sendable, Equatable {
    public enum Base: Sendable, Equatable {
        case defaultTemplate
        case template(name: String, tag: String)
        /// A rootfs tarball, an OCI image archive or a `docker save` archive (told apart by content).
        case archive(path: String)
        /// An OCI image layout directory.
        case ociLayout(path: String)
        /// An image in a registry (`ghcr.io/org/img:tag`, `127.0.0.1:5000/x@sha256:…`):
        /// a reference that names a registry host or pins a digest. A bare
        /// `NAME[:TAG]` is a `template` and, when no template has that name,
        /// an image on Docker Hub.
        case image(reference: String)
    }

    public enum Step: Sendable, Equatable {
        case run(argv: [String])                 // shell form becomes ["/bin/sh", "-c", text]
        case copy(sources: [String], dest: String)
        case env([String: String])
        case workdir(String)
        case user(String)
        case preload([String])                   // Python modules imported before a context's first cell

        /// Canonical text: the build cache keys each layer on it (plus its parent).
        public var cacheText: String {
            switch self {
            case .run(let a): "RUN " + JSONCodec.encode(.array(a.map { .string($0) }))
            case .copy(let s, let d): "COPY " + JSONCodec.encode(.array((s + [d]).map { .string($0) }))
            case .env(let e): "ENV " + e.keys.sorted().map { "\($0)=\(e[$0]!)" }.joined(separator: "\u{0}")
            case .workdir(let w): "WORKDIR " + w
            case .user(let u): "USER " + u
            case .preload(let m): "PRELOAD " + m.joined(separator: " ")
            }
        }
    }

    public struct Line: Sendable, Equatable {
        public var number: Int
        public var step: Step
    }

    public var base: Base
    public var steps: [Line]

    public static func parse(_ text: String) throws(SandpitError) -> BuildSpec {
        var logical: [(Int, String)] = []
        var pending = "", start = 0
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = String(raw)
            if line.hasSuffix("\r") { line.removeLast() }
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if pending.isEmpty && (trimmed.isEmpty || trimmed.hasPrefix("#")) { continue }
            if !pending.isEmpty && trimmed.hasPrefix("#") { continue }   // comments inside a continuation
            if pending.isEmpty { start = i + 1 }
            if line.hasSuffix("\\") {
                pending += line.dropLast() + " "
                continue
            }
            pending += line
            logical.append((start, pending))
            pending = ""
        }
        if !pending.isEmpty { logical.append((start, pending)) }
        guard let first = logical.first else { throw SandpitError.invalidParams("spec", "is empty: it needs a FROM line") }

        func fail(_ n: Int, _ why: String) -> SandpitError {
            SandpitError(.invalidParams, "spec line \(n): \(why)", details: ["field": "spec", "line": .int(Int64(n))])
        }
        func split(_ s: String) -> (String, String) {
            let t = s.drop { $0 == " " || $0 == "\t" }
            let word = t.prefix { $0 != " " && $0 != "\t" }
            let rest = t.dropFirst(word.count).drop { $0 == " " || $0 == "\t" }
            var r = String(rest)
            while r.last == " " || r.last == "\t" { r.removeLast() }
            return (word.uppercased(), r)
        }

        let (kw, arg) = split(first.1)
        guard kw == "FROM" else { throw fail(first.0, "the first instruction must be FROM, not \(kw)") }
        let base = try parseBase(arg, line: first.0, fail: fail)
        var steps: [Line] = []
        for (n, text) in logical.dropFirst() {
            let (kw, arg) = split(text)
            guard !arg.isEmpty else { throw fail(n, "\(kw) needs an argument") }
            switch kw {
            case "RUN":
                if arg.hasPrefix("[") {
                    guard let v = try? JSONCodec.parse(arg), let a = v.arrayValue?.compactMap(\.stringValue), a.count == v.arrayValue?.count, !a.isEmpty else {
                        throw fail(n, "RUN [...] must be a JSON array of strings")
                    }
                    steps.append(Line(number: n, step: .run(argv: a)))
                } else {
                    steps.append(Line(number: n, step: .run(argv: ["/bin/sh", "-c", arg])))
                }
            case "COPY":
                let parts: [String]
                if arg.hasPrefix("[") {
                    guard let v = try? JSONCodec.parse(arg), let a = v.arrayValue?.compactMap(\.stringValue), a.count == v.arrayValue?.count else {
                        throw fail(n, "COPY [...] must be a JSON array of strings")
                    }
                    parts = a
                } else {
                    parts = arg.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                }
                if parts.first?.hasPrefix("--") == true { throw fail(n, "COPY options (\(parts[0])) are not supported") }
                guard parts.count >= 2 else { throw fail(n, "COPY needs at least one source and a destination") }
                for src in parts.dropLast() where src.hasPrefix("/") || src.split(separator: "/").contains("..") {
                    throw fail(n, "COPY source \(src) must be a relative path inside the build context")
                }
                steps.append(Line(number: n, step: .copy(sources: Array(parts.dropLast()), dest: parts.last!)))
            case "ENV":
                steps.append(Line(number: n, step: .env(try parseEnv(arg, line: n, fail: fail))))
            case "WORKDIR":
                guard arg.hasPrefix("/") else { throw fail(n, "WORKDIR must be an absolute path") }
                steps.append(Line(number: n, step: .workdir(arg)))
            case "USER":
                guard arg.allSatisfy({ $0.isLetter || $0.isNumber || "_-.:".contains($0) }) else { throw fail(n, "USER must be a name or uid, optionally :group") }
                steps.append(Line(number: n, step: .user(arg)))
            case "PRELOAD":
                let mods = arg.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "," }).map(String.init)
                for m in mods where !ImageConfig.isModuleName(m) { throw fail(n, "PRELOAD \(m) is not a Python module name") }
                guard mods.count <= 32 else { throw fail(n, "PRELOAD takes at most 32 modules") }
                steps.append(Line(number: n, step: .preload(mods)))
            case "FROM":
                throw fail(n, "only one FROM (multi-stage builds are not supported)")
            default:
                throw fail(n, "unsupported instruction \(kw) (supported: FROM, RUN, COPY, ENV, WORKDIR, USER, PRELOAD)")
            }
        }
        return BuildSpec(base: base, steps: steps)
    }

    static func parseBase(_ arg: String, line: Int, fail: (Int, String) -> SandpitError) throws(SandpitError) -> Base {
        guard !arg.isEmpty, !arg.contains(" ") else { throw fail(line, "FROM takes one argument") }
        if arg == "default" || arg == "default:latest" { return .defaultTemplate }
        let archiveSuffixes = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz"]
        if arg.hasPrefix("/") || arg.hasPrefix("./") || arg.hasPrefix("../") {
            return archiveSuffixes.contains(where: { arg.hasSuffix($0) }) ? .archive(path: arg) : .ociLayout(path: arg)
        }
        let parts = arg.split(separator: ":", maxSplits: 1).map(String.init)
        if ImageReference.isExplicit(arg) || arg.contains("/") || !(TemplateName.isValid(parts[0]) && (parts.count == 1 || TemplateName.isValid(parts[1]))) {
            do { _ = try ImageReference.parse(arg) } catch {
                throw fail(line, "FROM \(arg): expected default, NAME[:TAG] (a template, else an image on Docker Hub), "
                           + "an image reference [REGISTRY/]NAME[:TAG][@sha256:DIGEST], or a path to a rootfs/OCI archive or layout")
            }
            return .image(reference: arg)
        }
        return .template(name: parts[0], tag: parts.count == 2 ? parts[1] : "latest")
    }

    /// `ENV K=V K2="v 2"` or the legacy `ENV K value with spaces`.
    static func parseEnv(_ arg: String, line: Int, fail: (Int, String) -> SandpitError) throws(SandpitError) -> [String: String] {
        var out: [String: String] = [:]
        let firstWord = arg.prefix { $0 != " " && $0 != "\t" }
        if !firstWord.contains("=") {
            let value = arg.dropFirst(firstWord.count).drop { $0 == " " || $0 == "\t" }
            guard !value.isEmpty else { throw fail(line, "ENV \(firstWord) needs a value") }
            out[String(firstWord)] = String(value)
            return out
        }
        var i = arg.startIndex
        while i < arg.endIndex {
            while i < arg.endIndex, arg[i] == " " || arg[i] == "\t" { i = arg.index(after: i) }
            if i == arg.endIndex { break }
            var key = ""
            while i < arg.endIndex, arg[i] != "=" { key.append(arg[i]); i = arg.index(after: i) }
            guard i < arg.endIndex, !key.isEmpty, !key.contains(" ") else { throw fail(line, "ENV expects KEY=VALUE pairs") }
            i = arg.index(after: i)
            var value = ""
            var quote: Character?
            while i < arg.endIndex {
                let ch = arg[i]
                if let q = quote {
                    if ch == q { quote = nil } else if ch == "\\", q == "\"", arg.index(after: i) < arg.endIndex {
                        i = arg.index(after: i); value.append(arg[i])
                    } else { value.append(ch) }
                } else if ch == "\"" || ch == "'" { quote = ch } else if ch == " " || ch == "\t" { break } else { value.append(ch) }
                i = arg.index(after: i)
            }
            guard quote == nil else { throw fail(line, "ENV: unterminated quote") }
            out[key] = value
        }
        return out
    }
}

/// Template names and tags: lower-case letters, digits, `.`, `_`, `-`; up to 64 characters.
public enum TemplateName {
    public static func isValid(_ s: String) -> Bool {
        guard let first = s.first, s.count <= 64, first.isASCII, first.isLowercase || first.isNumber else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || "._-".contains($0)) }
    }
}
