"""Sandpit across a Ray cluster (``pip install 'sandpit[ray]'``): a daemon per node, batch evaluation
spread over the nodes, and a code runner for reward functions.

    import ray, sandpit.ray
    ray.init(address="auto")
    for r in sandpit.ray.batch_iter(tasks, template="default"):    # the `sandpit batch` task format
        print(r["id"], r["status"], r["node"])
    runner = sandpit.ray.CodeRunner()
    runner.run("def add(a, b): return a + b", "assert add(2, 3) == 5")   # {"status": "passed", ...}

``python -m sandpit.ray batch TASKS.jsonl --out RESULTS.jsonl --address auto`` is the CLI form. See
docs/SCALING.md.
"""
from ._batch import batch, batch_iter, check_tasks, task_key
from ._node import NodeDaemon, daemons, describe, shutdown
from ._runner import CodeRunner

__all__ = ["CodeRunner", "NodeDaemon", "batch", "batch_iter", "check_tasks", "daemons", "describe", "shutdown", "task_key"]
