#if canImport(Glibc)
import Glibc
#endif

/// Crash points for tests of crash safety: with SANDPIT_CRASH_AT=NAME in the
/// daemon's environment, reaching `Fault.point(NAME)` ends the process at
/// once, as SIGKILL would (no cleanup, no flush). Unset, it costs a load.
///
/// With SANDPIT_FAIL_AT=NAME, `Fault.failure(NAME)` throws instead, for tests
/// of the paths that recover from a failed step.
enum Fault {
    static let target: String? = getenv("SANDPIT_CRASH_AT").map { String(cString: $0) }
    static let failing: String? = getenv("SANDPIT_FAIL_AT").map { String(cString: $0) }

    static func point(_ name: String) {
        guard let t = target, t == name else { return }
        kill(getpid(), SIGKILL)
    }

    struct Injected: Error, CustomStringConvertible {
        let name: String
        var description: String { "injected failure at \(name) (SANDPIT_FAIL_AT)" }
    }

    static func failure(_ name: String) throws {
        if let f = failing, f == name { throw Injected(name: name) }
    }
}
