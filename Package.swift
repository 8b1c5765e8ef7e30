// swift-tools-version: 6.1
import PackageDescription

// Dependency budget (each one must earn its build time):
// - swift-nio: non-blocking socket/pipe I/O with backpressure for the daemon's
//   transports and the per-sandbox agent channels. Writing our own epoll loop
//   would be the largest, riskiest part of the daemon.
// - swift-argument-parser: the `sandpit` CLI (subcommands, --help, validation).
// - swift-log: the one logging API every server-side Swift library speaks.
// - modelcontextprotocol/swift-sdk: `sandpit mcp`. MCP's handshake, capability
//   negotiation and message types move with the spec; the official SDK tracks
//   it (it adds swift-system and ~20 s to a first build, only to the CLI).
// SQLite is reached through the system libsqlite3 with a ~300-line wrapper
// (CSQLite + SandpitCatalog): the catalog needs a handful of statements, not an ORM.
// The byte-level codecs (JSON, base64, line framing) see every byte of every
// request, file chunks included, so SandpitCore and SandpitProtocol are
// optimized in debug builds too: unoptimized generic loops there made a
// debug daemon move files at ~5 MB/s, too slow for the GiB-sized tests.
let optimizedEvenInDebug: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "Sandpit",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "sandpit", targets: ["sandpit"]),
        .executable(name: "sandpit-agent", targets: ["sandpit-agent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/modelcontextprotocol/swift-sdk.git", from: "0.12.1"),
    ],
    targets: [
        // Everything that runs between clone() and execve(), and the in-sandbox
        // PID-1 agent's setup and loop. C, async-signal-safe, `sp_` prefixed.
        .target(name: "CSandpit", path: "Sources/CSandpit"),
        .executableTarget(name: "sandpit-agent", dependencies: ["CSandpit"], path: "Sources/sandpit-agent"),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),
        // libcurl (Debian: libcurl4-openssl-dev) for registry pulls: HTTP/2,
        // TLS with the system trust store, redirects, ranges. A hand-written
        // HTTPS client would be the riskiest code in the daemon.
        .systemLibrary(name: "CCurl", path: "Sources/CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),

        // No I/O: ids, models, errors, policies, JSON values, state.
        .target(name: "SandpitCore", swiftSettings: optimizedEvenInDebug),
        // Syscall wrappers, mounts, cgroups, user namespaces.
        .target(name: "SandpitOS", dependencies: ["CSandpit", "CCurl", "SandpitCore"]),
        // SQLite catalog.
        .target(name: "SandpitCatalog", dependencies: ["CSQLite", "SandpitCore"]),
        // JSON-RPC codec and framing; no sockets.
        .target(name: "SandpitProtocol", dependencies: ["SandpitCore"], swiftSettings: optimizedEvenInDebug),
        // The one Swift client of a daemon: a multiplexed JSON-RPC connection
        // (the CLI, `sandpit mcp` and `sandpit batch` all use it).
        .target(name: "SandpitClient", dependencies: ["SandpitCore", "SandpitOS", "SandpitProtocol"]),
        // Sandboxes, templates, agent channels, execs. The Python driver of
        // interpreter contexts is Drivers/python_driver.py, embedded at build time.
        .target(name: "SandpitEngine", dependencies: [
            "SandpitCore", "SandpitOS", "SandpitCatalog", "CSandpit",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], plugins: ["EmbedDrivers"]),
        // Build-time only: turns a text file into a Swift string constant.
        .executableTarget(name: "embed-text", path: "Sources/embed-text"),
        .plugin(name: "EmbedDrivers", capability: .buildTool(), dependencies: ["embed-text"]),
        // The service (method dispatch) and transports (stdio, Unix socket).
        .target(name: "SandpitDaemon", dependencies: [
            "SandpitCore", "SandpitProtocol", "SandpitEngine", "CSandpit",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "sandpit", dependencies: [
            "SandpitCore", "SandpitProtocol", "SandpitEngine", "CSandpit", "SandpitDaemon", "SandpitClient",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "MCP", package: "swift-sdk"),
        ]),

        .target(name: "SandpitTestSupport", dependencies: ["SandpitCore"], path: "Tests/SandpitTestSupport", swiftSettings: optimizedEvenInDebug),
        .testTarget(name: "SandpitCoreTests", dependencies: ["SandpitCore"], exclude: ["Golden"]),
        .testTarget(name: "SandpitOSTests", dependencies: ["SandpitOS"]),
        .testTarget(name: "SandpitProtocolTests", dependencies: ["SandpitProtocol", "SandpitCore"]),
        .testTarget(name: "SandpitCatalogTests", dependencies: ["SandpitCatalog", "SandpitCore", "SandpitTestSupport"]),
        .testTarget(name: "SandpitIntegrationTests", dependencies: ["SandpitCore", "SandpitTestSupport"]),
    ]
)
