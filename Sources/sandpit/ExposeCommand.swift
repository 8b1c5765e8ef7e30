import ArgumentParser
import SandpitClient
import SandpitCore

struct Expose: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a sandbox port reachable from the host (needs a daemon: --socket or SANDPIT_SOCKET).",
        discussion: """
        Prints the URL and the token. The exposure lasts until `sandpit expose --close ID PORT`
        or until the sandbox stops, hibernates or is deleted. HTTP clients send the token as
        `Authorization: Bearer TOKEN`, `X-Sandpit-Token: TOKEN` or `?sandpit_token=TOKEN`.
        """)
    @Argument(help: "Sandbox id.") var sandboxId: String
    @Argument(help: "The port a process in the sandbox listens on.") var port: Int
    @Flag(help: "Serve it on a Unix socket file (mode 0600) instead of a loopback TCP port.") var unix = false
    @Flag(help: "No token: anyone who can reach the host port gets through (needed for non-HTTP protocols).") var noToken = false
    @Option(help: "The host port to listen on (default: a free one).") var hostPort: Int?
    @Flag(help: "Close the exposures of this port instead.") var close = false
    @Flag(help: "Print the result as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        guard (1...65535).contains(port) else { throw ValidationError("PORT must be 1-65535") }
        guard client.socket != nil else { throw ValidationError("sandpit expose needs a running daemon: pass --socket PATH or set SANDPIT_SOCKET") }
        let c = try await client.connect()
        if close {
            let r = try await c.call("port.unexpose", ["sandboxId": .string(sandboxId), "port": .int(Int64(port))])
            await c.close()
            print(json ? JSONCodec.encode(r) : "closed \(r["closed"]?.intValue ?? 0) exposure(s) of port \(port)")
            return
        }
        var p: JSONObject = ["sandboxId": .string(sandboxId), "port": .int(Int64(port)), "on": .string(unix ? "unix" : "tcp"), "token": .bool(!noToken)]
        if let h = hostPort { p["hostPort"] = .int(Int64(h)) }
        let r = try await c.call("port.expose", p)
        await c.close()
        if json { print(JSONCodec.encode(r)); return }
        let url = r["url"]?.stringValue ?? ""
        print("url:   \(url)")
        if let t = r["token"]?.stringValue {
            print("token: \(t)")
            if let path = r["socketPath"]?.stringValue {
                print("try:   curl --unix-socket \(path) -H 'Authorization: Bearer \(t)' http://sandbox/")
            } else {
                print("try:   curl -H 'Authorization: Bearer \(t)' \(url)")
                print("open:  \(url)?sandpit_token=\(t)")
            }
        } else if let path = r["socketPath"]?.stringValue {
            print("try:   curl --unix-socket \(path) http://sandbox/")
        }
    }
}
