#!/usr/bin/env python3
"""Batch throughput: `sandpit batch` (one fresh sandbox per task) against the same tasks run as plain,
unsandboxed subprocesses with the same concurrency, measured in the same run.

  sudo python3 Benchmarks/batch.py [--n 300] [--concurrency 2] [--work 20000] [--sandpit .build/release/sandpit]
  sudo python3 Benchmarks/batch.py --eval [--concurrency 2]

The fixture comes from Fixtures/batch/make_tasks.py: small Python tasks plus infinite loops (timeout) and
a memory hog (oom). With --eval it is Fixtures/batch/eval/tasks.jsonl instead: 150 code-eval tasks (a
function written against the standard library and its asserts, 20-100 ms of CPU each; 15 fail on purpose). The baseline runs `/usr/bin/python3 -` (the interpreter the default template runs)
with the task's timeout and a 1 GiB address-space limit (so the hog fails instead of eating the host).
Prints tasks/s for each, the ratio, and sandpit's per-task phase medians.
"""
import argparse, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

def baseline(tasks, concurrency):
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    def limit(): resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    def one(t):
        argv = ["/usr/bin/python3", "-"] if "code" in t else (["/bin/bash", "-c", t["cmd"]] if isinstance(t["cmd"], str) else t["cmd"])
        try:
            subprocess.run(argv, input=t.get("code", "").encode(), capture_output=True, env=env, timeout=t.get("timeoutMs", 60000) / 1000,
                           preexec_fn=limit)
        except subprocess.TimeoutExpired:
            pass
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex: list(ex.map(one, tasks))
    return len(tasks) / (time.perf_counter() - t0)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--work", type=int, default=20000)
    ap.add_argument("--sandpit", default=None)
    ap.add_argument("--eval", action="store_true", help="the code-eval fixture instead of the synthetic one")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = a.sandpit or next((p for p in [f"{root}/.build/release/sandpit", f"{root}/.build/debug/sandpit"] if os.path.exists(p)), None)
    if not exe: sys.exit("build sandpit first (swift build -c release)")
    subprocess.run([f"{root}/scripts/build-agent", os.path.dirname(exe)], check=True)
    scratch = tempfile.mkdtemp(prefix="sandpit-batch-bench-", dir="/tmp")
    tasks_file, out = f"{scratch}/tasks.jsonl", f"{scratch}/results.jsonl"
    if a.eval:
        shutil.copy(f"{root}/Fixtures/batch/eval/tasks.jsonl", tasks_file)
    else:
        subprocess.run([sys.executable, f"{root}/Fixtures/batch/make_tasks.py", tasks_file, "--n", str(a.n), "--work", str(a.work)], check=True)
    tasks = [json.loads(l) for l in open(tasks_file)]
    what = "code-eval tasks (Fixtures/batch/eval)" if a.eval else f"({a.n} python, 3 infinite loops, 1 memory hog)"
    print(f"{len(tasks)} tasks {what}, concurrency {a.concurrency}, {os.cpu_count()} CPUs")
    # Warm the page cache and the store once (untimed).
    subprocess.run([exe, "batch", tasks_file, "--out", f"{scratch}/warm.jsonl", "--concurrency", str(a.concurrency), "--quiet",
                    "--data-dir", f"{scratch}/data"], stdout=subprocess.DEVNULL)
    b1 = baseline(tasks, a.concurrency)
    t0 = time.perf_counter()
    r = subprocess.run([exe, "batch", tasks_file, "--out", out, "--concurrency", str(a.concurrency), "--quiet", "--data-dir", f"{scratch}/data"],
                       capture_output=True, text=True)
    s = len(tasks) / (time.perf_counter() - t0)
    b2 = baseline(tasks, a.concurrency)
    results = [json.loads(l) for l in open(out)]
    by = {}
    for x in results: by[x["status"]] = by.get(x["status"], 0) + 1
    base = (b1 + b2) / 2
    print(f"plain subprocesses   {b1:7.1f} tasks/s (before), {b2:.1f} (after)")
    print(f"sandpit batch        {s:7.1f} tasks/s   ratio {s / base:.2f}x of plain   statuses {by}")
    for k in ("sandboxMs", "runMs", "deleteMs"):
        v = [x["timings"][k] for x in results if k in x.get("timings", {}) and x["status"] == "passed"]
        if v: print(f"  per passed task {k:10} median {statistics.median(v):6.2f} ms")
    if r.returncode not in (0, 1): print(r.stderr, file=sys.stderr)

if __name__ == "__main__":
    main()
