"""Round trip of a Jupyter kernel's `execute` for the cells the benchmark runs
through `code.run`: send execute_request, wait for execute_reply and for the
kernel to go idle (so all output has been published). Runs with the venv's
python (ipykernel + jupyter_client); prints {cell: [ms, ...]} as JSON."""
import json, sys, time
from jupyter_client.manager import start_new_kernel

def main():
    n = int(sys.argv[1])
    cells = sys.argv[2:]
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
        out = {}
        for code in cells:
            for _ in range(5): execute(code)   # warm-up
            ts = []
            for _ in range(n):
                t = time.perf_counter_ns(); execute(code); ts.append((time.perf_counter_ns() - t) / 1e6)
            out[code] = ts
        print(json.dumps(out))
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)

main()
