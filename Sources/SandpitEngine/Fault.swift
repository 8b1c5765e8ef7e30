#if canImport(Glibc)
import Glibc
#endif

/// Crash points for tests of crash safety: with SANDPIT_CRASH_AT=NAME in the
/// daemon's environment, reaching `Fault.point(NAME)` ends the process at
/// once, as SIGKILL would (no cleanup, no flush). Unset, it costs a load.
enum Fault {
    static let target: String? = getenv("SANDPIT_CRASH_AT").map { String(cString: $0) }

    static func point(_ name: String) {
        guard let t = target, t == name else { return }
        kill(getpid(), SIGKILL)
    }
}
