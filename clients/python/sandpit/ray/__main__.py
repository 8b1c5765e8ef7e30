"""``python -m sandpit.ray batch TASKS.jsonl --out RESULTS.jsonl [--address auto]``: ``sandpit batch`` across
a Ray cluster, a daemon per node. Same task and result lines (plus ``node``), a progress line, results
streamed to ``--out`` as they end, ``--resume``; exit 0 when every task ran, 1 when some could not
(``error``), 2 on bad input, 130 when interrupted."""
from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Set

from ._batch import batch_iter, check_tasks, task_key

STATUSES = ("passed", "failed", "timeout", "oom", "error")


def _read_tasks(path: str) -> List[Dict[str, Any]]:
    tasks = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tasks.append(json.loads(line))
            except ValueError as e:
                raise SystemExit(f"{path}:{n}: not JSON: {e}") from None
    if not tasks:
        raise SystemExit(f"{path} has no tasks")
    return tasks


def _done(path: str) -> Set[str]:
    keys: Set[str] = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue   # a line cut short by an interruption: that task runs again
                if isinstance(r, dict) and r.get("id") is not None and r.get("status") in STATUSES:
                    keys.add(task_key(r["id"]))
    except FileNotFoundError:
        pass
    return keys


class Progress:
    def __init__(self, total: int, prior: int, quiet: bool) -> None:
        self.total, self.prior, self.quiet = total, prior, quiet
        self.tty = sys.stderr.isatty()
        self.counts: Dict[str, int] = collections.Counter()
        self.nodes: Dict[str, int] = collections.Counter()
        self.started = time.monotonic()
        self.last = 0.0

    def add(self, r: Dict[str, Any]) -> None:
        self.counts[r.get("status", "error")] += 1
        self.nodes[(r.get("node") or "-")[:12]] += 1
        now = time.monotonic()
        if not self.quiet and (now - self.last > (0.2 if self.tty else 5.0)):
            self.last = now
            self.show()

    def line(self) -> str:
        done = self.prior + sum(self.counts.values())
        rate = sum(self.counts.values()) / max(time.monotonic() - self.started, 1e-9)
        width = 30
        filled = int(width * done / max(self.total, 1))
        split = " ".join(f"{n}={c}" for n, c in sorted(self.nodes.items()))
        return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                + " ".join(f"{s} {self.counts[s]}" for s in STATUSES if self.counts[s])
                + f"  {rate:.1f} tasks/s  nodes: {split}")

    def show(self) -> None:
        sys.stderr.write(("\r" + self.line() + "\x1b[K") if self.tty else self.line() + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if not self.quiet:
            self.show()
            if self.tty:
                sys.stderr.write("\n")


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandpit.ray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="run a JSONL file of tasks across the cluster")
    b.add_argument("tasks")
    b.add_argument("--out", required=True)
    b.add_argument("--address", default=None, help="the Ray cluster (default: RAY_ADDRESS, or a local one)")
    b.add_argument("--template", default="default")
    b.add_argument("--template-file", default=None, help="a template spec: built as --template on every node first")
    b.add_argument("--policy", default="default")
    b.add_argument("--concurrency", type=int, default=None, help="tasks at once across the cluster (default: each node's capacity)")
    b.add_argument("--output-bytes", type=int, default=65_536)
    b.add_argument("--max-tries", type=int, default=3, help="node failures a task may see before it is an error")
    b.add_argument("--sandpit", default=None, help="the sandpit executable on the nodes (default: PATH)")
    b.add_argument("--resume", action="store_true", help="skip the tasks that already have a result in --out")
    b.add_argument("--overwrite", action="store_true", help="replace --out if it has results")
    b.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.resume and a.overwrite:
        p.error("give --resume or --overwrite, not both")
    tasks = _read_tasks(a.tasks)
    try:
        check_tasks(tasks)
    except ValueError as e:
        print(f"{a.tasks}: {e}", file=sys.stderr)
        return 2
    has = os.path.exists(a.out) and os.path.getsize(a.out) > 0
    if has and not (a.resume or a.overwrite):
        print(f"{a.out} already has results: pass --resume to skip the tasks it has, or --overwrite to start over",
              file=sys.stderr)
        return 2
    done = _done(a.out) if a.resume else set()
    if done and not a.quiet:
        print(f"resuming: {len(done)} of {len(tasks)} tasks already have results in {a.out}", file=sys.stderr)
    spec = open(a.template_file, encoding="utf-8").read() if a.template_file else None

    import ray
    ray.init(address=a.address, log_to_driver=False, logging_level="ERROR")
    progress = Progress(len(tasks), len(done), a.quiet)
    interrupted = []

    def stop(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    try:
        with open(a.out, "a" if a.resume else "w", encoding="utf-8") as out:
            for r in batch_iter(tasks, template=a.template, template_spec=spec, policy=a.policy,
                                concurrency=a.concurrency, output_bytes=a.output_bytes, max_tries=a.max_tries,
                                skip=done, sandpit=a.sandpit):
                out.write(json.dumps(r, ensure_ascii=False) + "\n")
                out.flush()
                progress.add(r)
    except KeyboardInterrupt:
        progress.finish()
        n = len(done) + sum(progress.counts.values())
        print(f"interrupted: {n} of {len(tasks)} tasks have results; rerun with --resume to run the rest", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"sandpit.ray: {e}", file=sys.stderr)
        return 1
    progress.finish()
    total = len(done) + sum(progress.counts.values())
    print("\nstatus     tasks")
    for s in STATUSES:
        print(f"{s:<9}{progress.counts[s]:>7}")
    print(f"{'total':<9}{total:>7} of {len(tasks)}")
    print("by node: " + ", ".join(f"{n} {c}" for n, c in sorted(progress.nodes.items())))
    secs = time.monotonic() - progress.started
    ran = sum(progress.counts.values())
    print(f"ran {ran} in {secs:.1f} s ({ran / max(secs, 1e-9):.1f} tasks/s); results in {a.out}")
    return 1 if progress.counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
