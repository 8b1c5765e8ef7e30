#!/usr/bin/env python3
"""Writes a batch-evaluation fixture: N small Python tasks (most pass, some fail on purpose),
plus a few infinite loops (must come back `timeout`) and memory hogs (must come back `oom`).

  python3 Fixtures/batch/make_tasks.py OUT.jsonl [--n 300] [--loops 3] [--hogs 1] [--work 20000] [--timeout-ms 2000]

The expected status of every task is in its id (`pass-17`, `fail-3`, `raise-2`, `loop-1`, `oom-0`), so a
test can check each result against it. `--work` sets how far each task counts primes (20000 ≈ 10 ms of
CPU on top of the interpreter's start).
"""
import argparse, json

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--loops", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=1)
    ap.add_argument("--work", type=int, default=20000)
    ap.add_argument("--timeout-ms", type=int, default=2000)
    a = ap.parse_args()
    def primes(n):
        sieve = bytearray([1]) * (n + 1); sieve[0:2] = b"\0\0"
        for i in range(2, int(n ** 0.5) + 1):
            if sieve[i]: sieve[i * i::i] = bytearray(len(sieve[i * i::i]))
        return sum(sieve)
    tasks = []
    for i in range(a.n):
        k = a.work + i
        code = ("def count(n):\n    c = 0\n    for x in range(2, n + 1):\n"
                "        if all(x % d for d in range(2, int(x ** 0.5) + 1)): c += 1\n    return c\n"
                f"print(count({k}))\n")
        if i % 50 == 7:      # a wrong expectation: failed
            tasks.append({"id": f"fail-{i}", "code": code, "timeoutMs": a.timeout_ms, "expect": {"stdout": str(primes(k) + 1)}})
        elif i % 50 == 13:   # an exception: failed
            tasks.append({"id": f"raise-{i}", "code": code + "raise ValueError('task %d gave up')\n" % i, "timeoutMs": a.timeout_ms})
        else:
            tasks.append({"id": f"pass-{i}", "code": code, "timeoutMs": a.timeout_ms, "expect": {"stdout": str(primes(k))}})
    for j in range(a.loops):
        tasks.insert(len(tasks) * (j + 1) // (a.loops + 1), {"id": f"loop-{j}", "code": "while True:\n    pass\n", "timeoutMs": a.timeout_ms})
    for j in range(a.hogs):
        tasks.insert(len(tasks) * (j + 1) // (a.hogs + 2), {"id": f"oom-{j}", "timeoutMs": 60000,
                     "code": "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n    chunks[-1][::4096] = b'x' * (64 << 8)\n"})
    with open(a.out, "w") as f:
        for t in tasks: f.write(json.dumps(t) + "\n")

if __name__ == "__main__":
    main()
