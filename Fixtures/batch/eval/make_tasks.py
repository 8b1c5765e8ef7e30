#!/usr/bin/env python3
"""Writes the code-eval fixture (tasks.jsonl beside this file): one batch task per
problem of problems.py and size, 150 in all. A task is what a code-eval harness
runs per sample: the solution's source with its imports, a `check(candidate)` of
asserts against expected values (computed here from the reference solution), and
the call; every tenth task expects a wrong value, as a wrong answer would, and
fails. The id says which (`pass-<problem>-<k>`, `fail-<problem>-<k>`).

  python3 Fixtures/batch/eval/make_tasks.py [OUT.jsonl] [--calibrate]

--calibrate runs each task with the host's python3 and prints its CPU time (the
sizes are chosen for 20-100 ms of work on top of the interpreter's start)."""
import argparse, inspect, json, os, resource, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import problems  # noqa: E402


def source(fn):
    lines = inspect.getsource(fn).splitlines()
    return "\n".join(l for l in lines if not l.startswith("@problem(")) + "\n"


def helpers(src):
    """The module's private helpers a solution calls (`_name(`), with their own source."""
    out = []
    for name, obj in vars(problems).items():
        if name.startswith("_") and inspect.isfunction(obj) and name + "(" in src:
            out.append(inspect.getsource(obj))
    return "".join(out)


def tasks():
    out = []
    n = 0
    for fn, imports, sizes in problems.PROBLEMS:
        body = source(fn)
        extra = helpers(body)
        for k, size in enumerate(sizes):
            smaller = max(1, size // 2) if size > 20 else size - 1
            expected, expected_small = fn(size), fn(smaller)
            wrong = n % 10 == 9
            if wrong:
                expected = [expected, "a wrong answer"]
            code = (f"{imports}\n\n" if imports else "") + body + ("\n" + extra if extra else "") + (
                "\n\ndef check(candidate):\n"
                f"    assert candidate({smaller!r}) == {expected_small!r}\n"
                f"    assert candidate({size!r}) == {expected!r}\n\n\n"
                f"check({fn.__name__})\nprint('ok')\n")
            out.append({"id": f"{'fail' if wrong else 'pass'}-{fn.__name__}-{k}", "code": code, "timeoutMs": 20000,
                        **({} if wrong else {"expect": {"stdout": "ok"}})})
            n += 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks.jsonl"))
    ap.add_argument("--calibrate", action="store_true")
    a = ap.parse_args()
    ts = tasks()
    with open(a.out, "w") as f:
        for t in ts:
            f.write(json.dumps(t) + "\n")
    print(f"{len(ts)} tasks ({sum(t['id'].startswith('fail') for t in ts)} fail on purpose) -> {a.out}")
    if a.calibrate:
        base = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "pass"])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = (after.ru_utime + after.ru_stime - base.ru_utime - base.ru_stime) * 1000
        print(f"interpreter start: {start:.0f} ms of CPU")
        for t in ts:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run([sys.executable, "-"], input=t["code"].encode(), capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 - start
            print(f"{t['id']:40s} {ms:6.0f} ms  exit {p.returncode}{'  ' + p.stderr.decode()[-200:] if p.returncode and 'pass-' in t['id'] else ''}")


if __name__ == "__main__":
    main()
