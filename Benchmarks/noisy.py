#!/usr/bin/env python3
"""A noisy neighbour and a bystander (issue 27): the bystander's exec.run, 1 MiB fs.write and code.run
latencies (p50, p99), spaced 50 ms apart, alone and then while another sandbox runs a memory hog, a fork
bomb, a disk filler and an output flood at once, all in the same run. Target: bystander p99 <= 2x its
baseline for each call.

Usage: sudo python3 Benchmarks/noisy.py [--n 60] [--sandpit .build/release/sandpit] [--only 'memory hog' ...]
Starts its own daemon on a scratch data dir.
"""
import argparse, base64, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Client, pct   # noqa: E402

NOISE = {
    "memory hog": "while :; do python3 -c \"b=[]\nwhile True: b.append(bytearray(8<<20))\"; done 2>/dev/null",
    "fork bomb": "while :; do for i in $(seq 1 64); do sleep 1 & done; wait; done 2>/dev/null",
    "disk filler": "while :; do head -c 200M /dev/zero > /home/user/fill; sync /home/user/fill; rm -f /home/user/fill; done",
    "output flood": "yes 'noise noise noise noise noise noise noise noise'",
}


READER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\\n")
while s.recv(1 << 20):
    pass
"""


def measure(c, sb, n):
    out = {"exec.run true": [], "fs.write 1 MiB": [], "code.run": []}
    blob = base64.b64encode(os.urandom(1 << 20)).decode()
    for i in range(n):
        t = time.perf_counter()
        c.call("exec.run", {"sandboxId": sb, "cmd": ["true"]})
        out["exec.run true"].append((time.perf_counter() - t) * 1e3)
        time.sleep(0.05)
        t = time.perf_counter()
        c.call("fs.write", {"sandboxId": sb, "path": f"/tmp/f{i % 4}", "data": blob})
        out["fs.write 1 MiB"].append((time.perf_counter() - t) * 1e3)
        time.sleep(0.05)
        t = time.perf_counter()
        c.call("code.run", {"sandboxId": sb, "code": f"x = {i}\nx * 2"})
        out["code.run"].append((time.perf_counter() - t) * 1e3)
        time.sleep(0.05)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--sandpit", default=None)
    ap.add_argument("--only", action="append", choices=list(NOISE), help="run only this noise (repeatable), to find which hurts")
    a = ap.parse_args()
    exe = a.sandpit or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".build", "release", "sandpit")
    scratch = tempfile.mkdtemp(prefix="sandpit-noisy-")
    sock = os.path.join(scratch, "s.sock")
    d = subprocess.Popen([exe, "serve", "--socket", sock, "--data-dir", os.path.join(scratch, "data"), "--storage-gib", "8", "--warm-pool", "0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        c = Client(sock)
        by = c.call("sandbox.create", {})["sandboxId"]
        c.call("code.run", {"sandboxId": by, "code": "1"})   # the interpreter started
        base = measure(c, by, a.n)
        noisy = c.call("sandbox.create", {})["sandboxId"]
        # Each noise streams through a client process of its own that reads (and drops) everything the
        # daemon sends, as a real client would: in threads of this process, reading the flood would
        # take the GIL from the bystander's measurements and count the benchmark's own slowness.
        runners = []
        for name, cmd in NOISE.items():
            if a.only and name not in a.only:
                continue
            runners.append(subprocess.Popen([sys.executable, "-c", READER, sock, json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "exec.run", "params": {"sandboxId": noisy, "shell": cmd, "timeoutMs": 3_600_000}})]))
        time.sleep(3)
        loud = measure(c, by, a.n)
        print(f"{'bystander call':18} {'alone p50':>10} {'p99':>8}   {'noisy p50':>10} {'p99':>8}   p99 ratio")
        for k in base:
            b50, b99, l50, l99 = pct(base[k], 0.5), pct(base[k], 0.99), pct(loud[k], 0.5), pct(loud[k], 0.99)
            print(f"{k:18} {b50:9.2f}ms {b99:7.2f}ms   {l50:9.2f}ms {l99:7.2f}ms   {l99 / b99:5.2f}x")
        c.call("sandbox.delete", {"sandboxId": noisy})
        c.call("sandbox.delete", {"sandboxId": by})
        for r in runners:
            r.kill()
            r.wait()
    finally:
        d.terminate()
        d.wait(60)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
