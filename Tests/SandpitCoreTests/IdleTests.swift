import Testing
@testable import SandpitCore

/// The idle state machine with a mock clock: no sleeping.
@Suite struct IdleTests {
    let policy = IdlePolicy(pauseAfterMs: 1000, hibernateAfterMs: 5000, deleteAfterMs: 60000)

    @Test func pausesThenHibernatesThenDeletes() {
        var t = IdleTracker(policy: policy, now: 0)
        #expect(t.due(now: 999) == nil)
        #expect(t.due(now: 1000) == .pause)
        t.moved(to: .paused, now: 1000)
        #expect(t.due(now: 4999) == nil)
        #expect(t.nextDeadline(now: 1000) == 5000)
        #expect(t.due(now: 5000) == .hibernate)
        t.moved(to: .hibernated, now: 5000)
        #expect(t.due(now: 59_999) == nil)
        #expect(t.due(now: 60_000) == .delete)
    }

    @Test func activityAndRunningWorkKeepItAwake() {
        var t = IdleTracker(policy: policy, now: 0)
        t.begin(now: 500)
        #expect(t.due(now: 100_000) == nil, "a running exec is never idle")
        t.end(now: 100_000)
        #expect(t.due(now: 100_999) == nil)
        #expect(t.due(now: 101_000) == .pause)
        t.touch(now: 100_800)
        #expect(t.due(now: 101_000) == nil)
        #expect(t.idleMs(now: 101_000) == 200)
    }

    @Test func leasesHoldItAwakeAndIdlenessStartsWhenTheyEnd() {
        var t = IdleTracker(policy: policy, now: 0)
        t.lease(until: 30_000, now: 0)
        #expect(t.due(now: 29_999) == nil)
        #expect(t.nextDeadline(now: 10_000) == 30_000)
        #expect(t.due(now: 30_999) == nil)
        #expect(t.due(now: 31_000) == .pause)
        #expect(t.due(now: 35_000) == .hibernate, "straight to the furthest action reached")
    }

    @Test func connectedClientsHoldIt() {
        var t = IdleTracker(policy: policy, now: 0)
        t.hold()
        t.hold()
        #expect(t.due(now: 1_000_000) == nil)
        t.release(now: 1_000_000)
        #expect(t.due(now: 1_001_000) == nil, "one holder remains")
        t.release(now: 1_001_000)
        #expect(t.due(now: 1_002_000) == .pause)
    }

    @Test func backgroundProcessesCountOnlyWhenThePolicySays() {
        var keeps = IdleTracker(policy: policy, now: 0)
        keeps.backgroundProcesses = true
        #expect(keeps.due(now: 10_000) == nil)
        var ignores = IdleTracker(policy: IdlePolicy(pauseAfterMs: 1000, backgroundKeepsAwake: false), now: 0)
        ignores.backgroundProcesses = true
        #expect(ignores.due(now: 1000) == .pause)
    }

    @Test func noPolicyNeverActs() {
        let t = IdleTracker(policy: IdlePolicy(), now: 0)
        #expect(t.due(now: .max / 2) == nil)
        #expect(t.nextDeadline(now: 0) == nil)
    }

    @Test func wakingRestartsTheClock() {
        var t = IdleTracker(policy: policy, phase: .hibernated, now: 0)
        #expect(t.due(now: 2000) == nil, "hibernated: only delete remains")
        t.moved(to: .running, now: 50_000)
        #expect(t.due(now: 50_999) == nil)
        #expect(t.due(now: 51_000) == .pause)
    }
}
