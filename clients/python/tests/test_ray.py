"""Sandpit across a real Ray cluster on this machine: a head and two workers on loopback only, each with
its own temp dir, custom resource and Sandpit daemon. Batch results match a local ``sandpit batch`` of the
same file and come from every node; a worker killed mid-run (its raylet and its daemon) loses no task
and duplicates none; the CLI is interrupted and resumed; CodeRunner scores candidates forked from each
problem's prepared sandbox."""
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

# Every Ray process of this test, the driver's included, uses 127.0.0.1 (Ray otherwise resolves a
# loopback address to the host's first interface).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

import sandpit.ray as sr  # noqa: E402
from conftest import sandpit_bin  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def make_tasks(n):
    """Small tasks of every verdict: shell and Python, passing, failing, timing out, with files and setup."""
    out = []
    for i in range(n):
        k = i % 10
        if k < 5:
            out.append({"id": i, "cmd": f"echo $(({i} * {i}))", "expect": {"stdout": str(i * i)}})
        elif k == 5:
            out.append({"id": f"py-{i}", "code": f"print(sum(range({i})))", "expect": {"stdout": str(sum(range(i)))}})
        elif k == 6:
            out.append({"id": f"bad-{i}", "code": "raise ValueError('no')"})
        elif k == 7:
            out.append({"id": i, "cmd": "cat data/n.txt", "files": {"data/n.txt": "41\n"}, "setup": "echo 1 >> data/n.txt",
                        "expect": {"stdout": "41\n1"}})
        elif k == 8:
            out.append({"id": i, "cmd": "exit 3", "expect": {"exitCode": 3}})
        else:
            out.append({"id": i, "cmd": "sleep 5" if i % 500 == 9 else "true", "timeoutMs": 300})
    return out


@pytest.fixture(scope="module")
def cluster():
    base = tempfile.mkdtemp(prefix="sandpit-ray-test-", dir="/tmp")
    os.environ["SANDPIT_BIN"] = sandpit_bin()
    sock = os.environ.pop("SANDPIT_SOCKET", None)    # each node starts its own daemon
    fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    # Ray's Cluster writes the head's address into its default temp dir without making it (ray 2.60 on a
    # host where Ray never ran: FileNotFoundError for /tmp/ray/ray_current_cluster).
    os.makedirs(os.environ.get("RAY_TMPDIR") or "/tmp/ray", exist_ok=True)
    c = Cluster(initialize_head=True, head_node_args=dict(
        node_ip_address="127.0.0.1", num_cpus=1, resources={"sandpit-test-head": 1}, include_dashboard=False,
        temp_dir=os.path.join(base, "ray-head"), _system_config=fast))
    workers = [c.add_node(node_ip_address="127.0.0.1", num_cpus=1, resources={f"sandpit-test-w{i}": 1},
                          temp_dir=os.path.join(base, f"ray-w{i}")) for i in range(2)]
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield {"cluster": c, "workers": workers, "base": base}
    finally:
        sr.shutdown()          # the node daemons stop cleanly before Ray takes their actors away
        ray.shutdown()
        c.shutdown()
        if sock:
            os.environ["SANDPIT_SOCKET"] = sock
        left = subprocess.run(["pgrep", "-f", f"serve --socket {base}/"], capture_output=True, text=True).stdout.split()
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo") if f" {base}/" in line]
        for pid in left:
            os.kill(int(pid), signal.SIGKILL)
        for m in mounts:
            subprocess.run(["umount", "-l", m])
        shutil.rmtree(base, ignore_errors=True)
        assert not left and not mounts, f"daemons outlived the cluster: {left}, mounts left: {mounts}"


def handles(base):
    return sr.daemons(base_dir=base)


def local_batch(tasks, tmp_path, daemon):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    out = tmp_path / "local.jsonl"
    r = subprocess.run([sandpit_bin(), "batch", str(path), "--out", str(out), "--quiet", "--socket", daemon],
                       capture_output=True, text=True)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:], r.stdout[-2000:])
    return {json.dumps(r["id"]): r["status"] for r in map(json.loads, out.read_text().splitlines())}


def test_a_daemon_per_node_reports_its_capacity(cluster):
    hs = handles(cluster["base"])
    infos = sr.describe(hs)
    assert len(infos) == 3 and len({i["node"] for i in infos}) == 3 and len({i["socket"] for i in infos}) == 3
    for i in infos:
        assert i["started"] and i["cpus"] == 1 and i["capacity"] == 1 and i["memoryAvailableBytes"] > 0
        assert i["socket"].startswith(cluster["base"]) and i["limits"]["maxSandboxes"] > 0
    # Asked again: the same actors (by name), the same daemons.
    assert sorted(i["socket"] for i in sr.describe(handles(cluster["base"]))) == sorted(i["socket"] for i in infos)


def test_a_node_whose_daemon_cannot_start_says_why(cluster):
    hs = sr.daemons(sandpit="/bin/false", base_dir=os.path.join(cluster["base"], "broken"))
    with pytest.raises(ray.exceptions.RayActorError, match="did not start on Ray node"):
        sr.describe(hs)


def test_three_thousand_tasks_across_three_nodes_match_a_local_batch(cluster, tmp_path, daemon):
    tasks = make_tasks(3000)
    results = sr.batch(tasks, daemons=handles(cluster["base"]))
    keys = [json.dumps(r["id"]) for r in results]
    assert len(keys) == 3000 and len(set(keys)) == 3000
    by_node = collections.Counter(r["node"] for r in results)
    print("split by node:", dict(by_node))
    assert len(by_node) == 3 and min(by_node.values()) > 300
    assert all(tasks[r["index"]]["id"] == r["id"] for r in results)
    mine = {json.dumps(r["id"]): r["status"] for r in results}
    assert mine == local_batch(tasks, tmp_path, daemon)
    assert collections.Counter(mine.values()) == {"passed": 2694, "failed": 300, "timeout": 6}


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster):
    tasks = make_tasks(1200)
    hs = handles(cluster["base"])
    infos = sr.describe(hs)
    victim = cluster["workers"][1]
    victim_id = victim.node_id
    daemon_pid, victim_sock = next((i["daemonPid"], i["socket"]) for i in infos if i["node"] == victim_id)
    seen = []
    for r in sr.batch_iter(tasks, daemons=hs):
        seen.append(r)
        if len(seen) == 600:                       # halfway
            os.kill(daemon_pid, signal.SIGKILL)       # as a node dies: no clean shutdown of anything
            cluster["cluster"].remove_node(victim, allow_graceful=False)
    keys = [json.dumps(r["id"]) for r in seen]
    assert len(keys) == 1200 and len(set(keys)) == 1200
    after = collections.Counter(r["node"] for r in seen[600:])
    print(f"killed at 600 of 1200; after it, by node: {dict(after)}")
    assert victim_id not in after or after[victim_id] < 20, after    # only what was in flight finished there
    assert sum(1 for r in seen if r["status"] == "error") == 0, [r for r in seen if r["status"] == "error"][:3]
    # What the killed daemon's sandboxes left is cleared by the next daemon on its data dir (as when a
    # host reboots into its service); then the cluster gets a fresh worker for the next tests.
    home = os.path.dirname(victim_sock)
    d = subprocess.Popen([sandpit_bin(), "serve", "--socket", victim_sock, "--data-dir", os.path.join(home, "data")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if os.path.exists(victim_sock) and subprocess.run([sandpit_bin(), "info", "--socket", victim_sock],
                                                          capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    d.terminate()
    assert d.wait(60) == 0
    cluster["workers"][1] = cluster["cluster"].add_node(node_ip_address="127.0.0.1", num_cpus=1,
                                                        resources={"sandpit-test-w1": 1},
                                                        temp_dir=os.path.join(cluster["base"], "ray-w1b"))


def test_the_cli_is_interrupted_and_resumed_across_the_cluster(cluster, tmp_path):
    tasks = make_tasks(600)
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "sandpit.ray", "batch", str(path), "--out", str(out), "--address",
           cluster["cluster"].address, "--quiet"]
    env = dict(os.environ, SANDPIT_RAY_DIR=cluster["base"])
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 100):
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert 100 <= len(first) < 600 and "--resume" in err
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"ran {600 - len(first)} in" in r.stdout and "by node:" in r.stdout, r.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(json.dumps(x["id"]) for x in lines) == sorted(json.dumps(t["id"]) for t in tasks)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already has results" in again.stderr


def test_large_tasks_are_sent_in_requests_the_daemons_accept(cluster):
    """60 tasks carrying 2.5 MiB files each: the chunks are cut by size too (a request line past the
    daemon's 16 MiB limit would be refused)."""
    big = "x" * (5 << 19)   # 2.5 MiB: eight of them are past the limit
    tasks = [{"id": i, "cmd": "wc -c < big.txt", "files": {"big.txt": big}} for i in range(60)]
    rs = sr.batch(tasks, daemons=handles(cluster["base"]))
    assert sorted(r["id"] for r in rs) == list(range(60))
    assert len({r["node"] for r in rs}) == 3, collections.Counter(r["node"] for r in rs)   # no node given up on
    assert {(r["status"], r["stdout"].strip()) for r in rs} == {("passed", str(5 << 19))}


def test_bad_tasks_and_a_missing_template_stop_the_run_before_anything_runs(cluster):
    hs = handles(cluster["base"])
    with pytest.raises(ValueError, match=r"tasks\[1\].id: duplicate"):
        sr.batch([{"id": 1, "cmd": "true"}, {"id": 1, "cmd": "true"}], daemons=hs)
    with pytest.raises(ValueError, match=r"tasks\[0\].cmmd: unknown field"):
        sr.batch([{"id": 1, "cmmd": "true"}], daemons=hs)
    with pytest.raises(RuntimeError, match="template 'no-such' is not usable on every node"):
        sr.batch([{"id": 1, "cmd": "true"}], template="no-such", daemons=hs)
    # Built from its spec on every node first, then used.
    r = sr.batch([{"id": i, "cmd": "cat /home/user/marker"} for i in range(6)], template="ray-marked",
                 template_spec="FROM default\nRUN echo marked > /home/user/marker\n", daemons=hs)
    assert {x["stdout"] for x in r} == {"marked\n"} and len({x["node"] for x in r}) >= 2


def test_code_runner_scores_candidates_forked_from_each_prepared_problem(cluster):
    runner = sr.CodeRunner(daemons=handles(cluster["base"]))
    assert runner.run("def add(a, b): return a + b", "assert add(2, 3) == 5")["status"] == "passed"
    bad = runner.run("def add(a, b): return a - b", "assert add(2, 3) == 5")
    assert bad["status"] == "failed" and "AssertionError" in bad["reason"]
    assert runner.run("while True: pass", "", timeout=0.5)["status"] == "timeout"
    # 20 problems, each with a data file and a setup step done once per node; 1,000 candidates.
    cands = []
    for i in range(1000):
        p = i % 20
        right = i % 7 != 0
        cands.append({"code": f"def solve():\n    return int(open('/home/user/p{p}.txt').read()) + {1 if right else 2}",
                      "tests": f"assert solve() == {p + 1}", "files": {f"/home/user/p{p}.txt": f"{p}\n"},
                      "setup": [f"test -s /home/user/p{p}.txt && touch /home/user/prepared"], "timeout": 5})
    t0 = time.monotonic()
    verdicts = runner.map(cands)
    secs = time.monotonic() - t0
    print(f"CodeRunner: {len(cands)} candidates in {secs:.1f} s ({len(cands) / secs:.1f}/s)")
    assert collections.Counter(v["status"] for v in verdicts) == {"passed": 857, "failed": 143}
    assert [v["status"] == "passed" for v in verdicts] == [i % 7 != 0 for i in range(1000)]
    assert len({v["node"] for v in verdicts}) == 3
    # From a reward function inside a Ray task.
    @ray.remote
    def reward(r, code):
        return 1.0 if r.run(code, "assert f() == 42")["status"] == "passed" else 0.0
    assert ray.get([reward.remote(runner, "def f(): return 42"), reward.remote(runner, "def f(): return 0")]) == [1.0, 0.0]


class FakeNode:
    """A node at the seam the scheduler calls (``run_tasks.options(...).remote(...)``, an async stream of
    result refs): it runs tasks in order and dies, as a node does, when it reaches a task whose cmd is
    ``kill-node``. For the retry rules, which a real sandbox cannot trigger (no task can kill its daemon)."""

    def __init__(self, name, log):
        self.name, self.log, self.dead = name, log, False
        self.run_tasks = self

    def options(self, **_):
        return self

    def remote(self, tasks, indices, *_):
        async def stream():
            for t, i in zip(tasks, indices):
                if self.dead or t["cmd"] == "kill-node":
                    self.dead = True
                    self.log.append((self.name, t["id"], "died"))
                    raise ray.exceptions.ActorDiedError()
                self.log.append((self.name, t["id"], "ran"))

                async def ref(i=i, t=t):
                    return {"id": t["id"], "index": i, "status": "passed", "node": self.name}
                yield ref()
        return stream()


def test_a_task_that_keeps_killing_nodes_is_an_error_after_its_tries_and_takes_no_other_task_with_it():
    import asyncio
    from sandpit.ray._batch import _Run, _drive
    tasks = [{"id": i, "cmd": "kill-node" if i == 5 else "true"} for i in range(40)]
    log, out = [], []
    nodes = [FakeNode(f"n{k}", log) for k in range(4)]
    run = _Run(tasks, range(40), out.append, max_tries=3)
    asyncio.run(_drive(nodes, [{"node": n.name, "capacity": 1} for n in nodes], run, "default", "default", None, 0))
    assert sorted(r["id"] for r in out) == list(range(40))                      # each exactly once
    bad = [r for r in out if r["status"] == "error"]
    assert [r["id"] for r in bad] == [5] and "failed 3 times" in bad[0]["reason"]
    assert sum(1 for name, tid, what in log if tid == 5) == 3                    # tried on three nodes
    # Retried alone: no other task was in a chunk that died twice.
    deaths = collections.Counter(tid for _, tid, what in log if what == "died")
    assert set(deaths) == {5}, deaths
    assert sum(n.dead for n in nodes) == 3 and run.dead


def test_when_every_node_is_gone_the_rest_are_errors_naming_why():
    import asyncio
    from sandpit.ray._batch import _Run, _drive
    tasks = [{"id": i, "cmd": "kill-node"} for i in range(3)]
    out = []
    nodes = [FakeNode("only", [])]
    run = _Run(tasks, range(3), out.append, max_tries=5)
    asyncio.run(_drive(nodes, [{"node": "only", "capacity": 2}], run, "default", "default", None, 0))
    assert sorted(r["id"] for r in out) == [0, 1, 2] and {r["status"] for r in out} == {"error"}
    assert all("no Ray node is left" in r["reason"] for r in out)
