"""What the VM lane's guest scripts (guest_checks.py, guest_rootless.py) share: a check decorator
that runs a check at once and records pass or fail with what it saw, and the report files."""
import os
import time
import traceback


class Checks:
    def __init__(self, label=""):
        self.label = label
        self.results = []

    def __call__(self, name):
        def wrap(fn):
            t0 = time.time()
            try:
                fn()
                self.results.append((name, True, ""))
            except Exception as e:  # noqa: BLE001 - a failed check is reported, not raised
                self.results.append((name, False, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=2)}"))
            print(f"{'ok  ' if self.results[-1][1] else 'FAIL'} {self.label}{name} ({time.time() - t0:.1f} s)", flush=True)
            return fn
        return wrap

    def report(self, out, log_name, result_name, passed_text):
        """Writes every check with its failure (log_name) and one line (result_name): "passed N
        <passed_text>" or "failed K of N ...", which scripts/test-vm and scripts/test read."""
        failed = [r for r in self.results if not r[1]]
        with open(os.path.join(out, log_name), "w") as f:
            for name, ok, why in self.results:
                f.write(f"{'ok  ' if ok else 'FAIL'} {name}\n{why}")
        with open(os.path.join(out, result_name), "w") as f:
            if failed:
                what = (" " + self.label.rstrip(": ")) if self.label else ""
                f.write(f"failed {len(failed)} of {len(self.results)}{what}: " + "; ".join(n for n, _, _ in failed) + "\n")
            else:
                f.write(f"passed {len(self.results)} {passed_text}\n")
