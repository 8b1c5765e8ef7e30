#!/usr/bin/env python3
"""Sandpit across a Ray cluster on this machine, against one node, in the same run.

    sudo .build/pyvenv/bin/python Benchmarks/ray_batch.py [--tasks 2000] [--candidates 1000]

1. ``sandpit batch`` of N small tasks on one daemon (the baseline).
2. ``sandpit.ray.batch`` of the same tasks on a 3-node Ray cluster on loopback (head and two workers, 1 CPU
   each, a daemon per node). The nodes share this machine's cores, so the figure is the overhead Ray adds,
   not a speedup (target: at least 0.8x the baseline).
3. ``CodeRunner`` scoring C candidates for 20 problems (each problem's files and setup done once per node,
   each candidate forked from it), beside the same candidates as a local ``sandpit batch`` (whose tasks
   with the same files and setup also fork from one base).

Needs the ray package (scripts/test-python puts it in .build/pyvenv) and a built sandpit (SANDPIT_BIN or
.build/release/sandpit, else .build/debug/sandpit).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # every Ray process on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sandpit_bin():
    for p in (os.environ.get("SANDPIT_BIN"), f"{ROOT}/.build/release/sandpit", f"{ROOT}/.build/debug/sandpit"):
        if p and os.path.exists(p):
            return p
    sys.exit("build sandpit first (swift build -c release) or set SANDPIT_BIN")


def tasks(n):
    out = []
    for i in range(n):
        if i % 2:
            out.append({"id": i, "code": f"print(sum(range({i})))", "expect": {"stdout": str(sum(range(i)))}})
        else:
            out.append({"id": i, "cmd": f"echo $(({i} * 3))", "expect": {"stdout": str(i * 3)}})
    return out


def candidates(n):
    out = []
    for i in range(n):
        p = i % 20
        out.append({"code": f"def solve():\n    return int(open('/home/user/p{p}.txt').read()) + 1",
                    "tests": f"assert solve() == {p + 1}", "files": {f"/home/user/p{p}.txt": f"{p}\n"},
                    "setup": [f"test -s /home/user/p{p}.txt"], "timeout": 10})
    return out


def local_batch(exe, sock, ts, tmp):
    path, out = os.path.join(tmp, "tasks.jsonl"), os.path.join(tmp, "out.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in ts)
    t0 = time.monotonic()
    subprocess.run([exe, "batch", path, "--out", out, "--overwrite", "--quiet", "--socket", sock], check=True,
                   stdout=subprocess.DEVNULL)
    secs = time.monotonic() - t0
    statuses = [json.loads(line)["status"] for line in open(out)]
    return secs, statuses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    exe = sandpit_bin()
    os.environ["SANDPIT_BIN"] = exe
    import ray
    from ray.cluster_utils import Cluster
    import sandpit.ray as sr

    tmp = tempfile.mkdtemp(prefix="sandpit-raybench-", dir="/tmp")
    sock = os.path.join(tmp, "s.sock")
    d = subprocess.Popen([exe, "serve", "--socket", sock, "--data-dir", os.path.join(tmp, "data")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.05)
    os.makedirs(os.environ.get("RAY_TMPDIR") or "/tmp/ray", exist_ok=True)   # Ray's Cluster does not make it
    c = Cluster(initialize_head=True, head_node_args=dict(node_ip_address="127.0.0.1", num_cpus=1,
                                                          include_dashboard=False))
    for _ in range(2):
        c.add_node(node_ip_address="127.0.0.1", num_cpus=1)
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    try:
        hs = sr.daemons(base_dir=os.path.join(tmp, "nodes"))
        sr.describe(hs)
        ts = tasks(a.tasks)
        sr.batch(ts[:60], daemons=hs)   # warm: each node's first sandboxes and interpreter caches
        local, cluster, splits = [], [], []
        for _ in range(a.rounds):
            secs, local_statuses = local_batch(exe, sock, ts, tmp)
            local.append(len(ts) / secs)
            t0 = time.monotonic()
            rs = sr.batch(ts, daemons=hs)
            cluster.append(len(ts) / (time.monotonic() - t0))
            assert sorted(r["status"] for r in rs) == sorted(local_statuses)
            splits.append(sorted(sum(1 for r in rs if r["node"] == n) for n in {r["node"] for r in rs}))
        lm, cm = statistics.median(local), statistics.median(cluster)
        print(f"batch of {len(ts)} tasks, median of {a.rounds}:")
        print(f"  sandpit batch, one daemon       {lm:8.1f} tasks/s")
        print(f"  sandpit.ray.batch, 3 Ray nodes  {cm:8.1f} tasks/s   ratio {cm / lm:.2f}x   split {splits[-1]}")

        runner = sr.CodeRunner(daemons=hs)
        cs = candidates(a.candidates)
        runner.map(cs[:40])   # each node prepares the problems once
        t0 = time.monotonic()
        vs = runner.map(cs)
        rate = len(cs) / (time.monotonic() - t0)
        assert all(v["status"] == "passed" for v in vs), [v for v in vs if v["status"] != "passed"][:2]
        same = [{"id": i, "code": x["code"] + "\n\n" + x["tests"], "files": x["files"], "setup": x["setup"][0],
                 "timeoutMs": 10000} for i, x in enumerate(cs)]
        secs, statuses = local_batch(exe, sock, same, tmp)
        assert set(statuses) == {"passed"}
        print(f"{len(cs)} candidates for 20 problems (forked from each problem's prepared sandbox):")
        print(f"  CodeRunner, 3 Ray nodes         {rate:8.1f} candidates/s")
        print(f"  sandpit batch, one daemon       {len(cs) / secs:8.1f} candidates/s   ratio {rate / (len(cs) / secs):.2f}x")
    finally:
        sr.shutdown()
        ray.shutdown()
        c.shutdown()
        d.terminate()
        d.wait(60)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
