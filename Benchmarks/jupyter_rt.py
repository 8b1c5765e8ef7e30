"""Unsandboxed baselines the benchmark needs a Jupyter kernel for. Runs with
the venv's python (ipykernel + jupyter_client); prints JSON.

  jupyter_rt.py N [--gap S] CELL...     round trip of `execute` for each cell, N times, S seconds
                                        apart: {cell: [ms, ...]}
  jupyter_rt.py --loop STEPS --think S --shell CMD --cell CODE
                                        the agent loop of bench.py section (k) unsandboxed:
                                        {"waitedMs": total, "steps": [ms, ...]}

A round trip is execute_request until execute_reply and the kernel's going
idle (so all output has been published)."""
import argparse, json, os, subprocess, tempfile, time
from jupyter_client.manager import start_new_kernel

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=0)
    ap.add_argument("cells", nargs="*")
    ap.add_argument("--gap", type=float, default=0.0)
    ap.add_argument("--loop", type=int, default=0)
    ap.add_argument("--think", type=float, default=0.2)
    ap.add_argument("--shell", help="the loop's shell command (bench.py passes its own)")
    ap.add_argument("--cell", help="the loop's cell (bench.py passes its own)")
    a = ap.parse_intermixed_args()
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        def execute(code):
            msg_id = kc.execute(code, store_history=True)
            idle = replied = False
            while not (idle and replied):
                if not idle:
                    m = kc.get_iopub_msg(timeout=30)
                    if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                        idle = True
                if idle and not replied:
                    m = kc.get_shell_msg(timeout=30)
                    replied = m["parent_header"].get("msg_id") == msg_id
        execute("x = 1")
        if a.loop:
            blob = os.urandom(4096)
            path = os.path.join(tempfile.mkdtemp(prefix="sandpit-bench-loop-"), "f")
            steps = []
            for i in range(a.loop):
                time.sleep(a.think)
                t = time.perf_counter_ns()
                if i % 3 == 0:
                    subprocess.run(["sh", "-c", a.shell], capture_output=True, check=True)
                elif i % 3 == 1:
                    execute(a.cell)
                else:
                    with open(path, "wb") as f: f.write(blob)
                    with open(path, "rb") as f: assert f.read() == blob
                steps.append((time.perf_counter_ns() - t) / 1e6)
            print(json.dumps({"waitedMs": sum(steps), "steps": steps}))
            return
        out = {}
        for code in a.cells:
            for _ in range(5): execute(code)   # warm-up
            ts = []
            for _ in range(a.n):
                if a.gap: time.sleep(a.gap)
                t = time.perf_counter_ns(); execute(code); ts.append((time.perf_counter_ns() - t) / 1e6)
            out[code] = ts
        print(json.dumps(out))
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)

main()
