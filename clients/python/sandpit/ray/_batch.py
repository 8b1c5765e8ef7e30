"""``sandpit batch`` across a Ray cluster: each node's daemon runs chunks of the tasks; results stream
back as they end, exactly one per task id, whatever node dies meanwhile."""
from __future__ import annotations

import asyncio
import collections
import json
import queue
import threading
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set

import ray
from ray.exceptions import RayActorError, RayTaskError

from ._node import daemons as _daemons
from ._node import describe

TASK_FIELDS = {"id", "cmd", "code", "timeoutMs", "files", "setup", "expect"}
_SLOTS = 2          # requests in flight per node: one runs while the next starts
_CHUNK = 8          # tasks per request, per unit of its concurrency
_CHUNK_BYTES = 4 << 20   # and at most this much JSON (the daemon takes 16 MiB lines), as `sandpit batch`


def task_key(task_id: Any) -> str:
    """A task id as a key: the integer 7 and the string "7" are different ids, as in ``sandpit batch``."""
    return json.dumps(task_id, sort_keys=True)


def check_tasks(tasks: Sequence[Dict[str, Any]]) -> None:
    """What the daemons would refuse, found before anything runs (``ValueError`` naming ``tasks[i]``)."""
    seen: Set[str] = set()
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            raise ValueError(f"tasks[{i}]: a task is an object")
        unknown = sorted(set(t) - TASK_FIELDS)
        if unknown:
            raise ValueError(f"tasks[{i}].{unknown[0]}: unknown field (a task has {', '.join(sorted(TASK_FIELDS))})")
        if t.get("id") is None or not isinstance(t["id"], (str, int)) or isinstance(t["id"], bool):
            raise ValueError(f"tasks[{i}].id: required, a string or an integer")
        if ("cmd" in t) == ("code" in t):
            raise ValueError(f"tasks[{i}]: give cmd or code, not both or neither")
        k = task_key(t["id"])
        if k in seen:
            raise ValueError(f"tasks[{i}].id: duplicate task id {t['id']!r}")
        seen.add(k)


def error_result(task: Dict[str, Any], index: int, message: str, node: Optional[str], code: str = "unavailable") -> Dict[str, Any]:
    return {"id": task["id"], "index": index, "status": "error", "reason": message, "exitCode": None, "stdout": "",
            "stderr": "", "stdoutBytes": 0, "stderrBytes": 0, "durationMs": 0.0,
            "timings": {"sandboxMs": 0.0, "runMs": 0.0}, "error": {"code": code, "message": message}, "node": node}


def _shares(infos: List[Dict[str, Any]], concurrency: Optional[int]) -> List[int]:
    """Tasks at once per node: its capacity, or ``concurrency`` split in proportion to the capacities."""
    caps = [max(1, int(i["capacity"])) for i in infos]
    if concurrency is None:
        return caps
    total = sum(caps)
    shares = [max(1, concurrency * c // total) for c in caps]
    for i in sorted(range(len(caps)), key=lambda j: -caps[j]):
        if sum(shares) >= concurrency:
            break
        shares[i] += 1
    return shares


class _Run:
    def __init__(self, tasks: Sequence[Dict[str, Any]], indices: Iterable[int], emit: Callable[[Dict[str, Any]], None],
                 max_tries: int) -> None:
        self.tasks = tasks
        self.queue: Deque[int] = collections.deque(indices)
        self.total = len(self.queue)
        self.emit = emit
        self.max_tries = max_tries
        self.tries: Dict[int, int] = collections.defaultdict(int)
        self.done: Set[int] = set()
        self.dead: Dict[str, str] = {}
        self.changed = asyncio.Event()
        self.live = 0

    def finish(self, i: int, r: Dict[str, Any]) -> None:
        if i in self.done:
            return   # a late duplicate (a re-run raced the first): the first answer stands
        self.done.add(i)
        self.emit(r)
        self.changed.set()

    def take(self, n: int) -> List[int]:
        out: List[int] = []
        size = 0
        while self.queue and len(out) < n:
            i = self.queue[0]
            if self.tries[i] and out:
                break           # a task being retried runs alone, so one that kills nodes takes nobody with it
            size += len(json.dumps(self.tasks[i]))
            if out and size > _CHUNK_BYTES:
                break
            out.append(self.queue.popleft())
            if self.tries[i]:
                break
        return out

    def node_failed(self, node: str, why: str) -> None:
        if node not in self.dead:
            self.dead[node] = why
            self.live -= 1

    def lost(self, running: Set[int], node: str, why: str) -> None:
        for i in sorted(running, reverse=True):
            self.tries[i] += 1
            if self.tries[i] >= self.max_tries:
                self.finish(i, error_result(self.tasks[i], i, f"its node failed {self.tries[i]} times while running it "
                                                              f"(last: {why})", node))
            else:
                self.queue.appendleft(i)
        self.changed.set()

    async def worker(self, h: Any, node: str, conc: int, template: str, policy: str, output_bytes: int) -> None:
        while len(self.done) < self.total and node not in self.dead:
            if not self.queue:
                self.changed.clear()
                if len(self.done) >= self.total:
                    return
                await self.changed.wait()
                continue
            slots = max(1, self.live * _SLOTS)
            take = self.take(max(1, min(conc * _CHUNK, -(-len(self.queue) // slots))))
            running = set(take)
            try:
                gen = h.run_tasks.options(num_returns="streaming").remote(
                    [self.tasks[i] for i in take], take, template, policy, conc, output_bytes)
                async for ref in gen:
                    r = await ref
                    i = r.get("index")
                    if i in running:
                        running.discard(i)
                        self.finish(i, r)
            except RayTaskError as e:
                cause = e.cause if hasattr(e, "cause") else None
                code = getattr(cause, "code", None)
                if code in ("invalid_params", "not_found", "permission_denied", "request_too_large"):
                    # The tasks themselves (or the template): the same on any node, so not retried.
                    for i in running:
                        self.finish(i, error_result(self.tasks[i], i, str(cause), node, code))
                    continue
                self.node_failed(node, f"its daemon failed: {cause or e}")
                self.lost(running, node, self.dead[node])
                return
            except RayActorError as e:
                self.node_failed(node, f"the node or its actor died: {e.__class__.__name__}")
                self.lost(running, node, self.dead[node])
                return
            if running:   # the batch ended without answering for some: run them again
                self.lost(running, node, "no result came back")


async def _drive(handles: List[Any], infos: List[Dict[str, Any]], run: _Run, template: str, policy: str,
                 concurrency: Optional[int], output_bytes: int) -> None:
    shares = _shares(infos, concurrency)
    workers = []
    for h, info, share in zip(handles, infos, shares):
        slot_conc = [c for c in (-(-share // _SLOTS), share // _SLOTS) if c > 0]
        run.live += 1
        for c in slot_conc:
            workers.append(run.worker(h, info["node"], c, template, policy, output_bytes))
    await asyncio.gather(*workers)
    # Every node gone with work left: those tasks cannot run anywhere.
    while run.queue:
        i = run.queue.popleft()
        why = "; ".join(f"{n[:12]}: {w}" for n, w in run.dead.items()) or "no node"
        run.finish(i, error_result(run.tasks[i], i, f"no Ray node is left to run it ({why})", None))


def prepare(template: str, spec: Optional[str], handles: Optional[List[Any]] = None, **daemon_args: Any) -> tuple:
    """The node daemons and their capacity, with the template on every node, or a clear error before
    any task runs."""
    if not ray.is_initialized():
        ray.init()
    hs = handles if handles is not None else _daemons(**daemon_args)
    if not hs:
        raise RuntimeError("the Ray cluster has no alive node")
    infos = describe(hs)
    refs = [h.ensure_template.remote(template, spec) for h in hs]
    errors = []
    for ref in refs:   # each one got, so no node's failure goes unreported
        try:
            ray.get(ref)
        except RayTaskError as e:
            errors.append(str(getattr(e, "cause", e)))
    if errors:
        raise RuntimeError(f"template {template!r} is not usable on every node: {errors[0]}"
                           + (f" (and {len(errors) - 1} more nodes)" if len(errors) > 1 else ""))
    return hs, infos


def batch_iter(tasks: Sequence[Dict[str, Any]], *, template: str = "default", policy: str = "default",
               template_spec: Optional[str] = None, concurrency: Optional[int] = None, output_bytes: int = 65_536,
               max_tries: int = 3, skip: Iterable[str] = (), daemons: Optional[List[Any]] = None,
               on_progress: Optional[Callable[[Dict[str, Any]], None]] = None, **daemon_args: Any) -> Iterator[Dict[str, Any]]:
    """Runs ``tasks`` (the ``sandpit batch`` task format) across the cluster's nodes and yields each result
    dict as it ends: the fields of a ``sandpit batch`` result line, plus ``node`` (the Ray node id that ran
    it). ``skip``: task keys (:func:`task_key`) to leave out (``--resume``). A node that dies mid-run has its
    tasks run elsewhere; a task whose node fails ``max_tries`` times is an ``error``."""
    check_tasks(tasks)
    hs, infos = prepare(template, template_spec, daemons, **daemon_args)
    skip = set(skip)
    results: "queue.Queue[Any]" = queue.Queue()
    run_ref: List[_Run] = []

    def go() -> None:
        async def main() -> None:
            run = _Run(tasks, [i for i, t in enumerate(tasks) if task_key(t["id"]) not in skip], results.put, max_tries)
            run_ref.append(run)
            await _drive(hs, infos, run, template, policy, concurrency, output_bytes)
        try:
            asyncio.run(main())
            results.put(None)
        except BaseException as e:   # surfaces in the caller's thread
            results.put(e)
    t = threading.Thread(target=go, name="sandpit-ray-batch", daemon=True)
    t.start()
    while True:
        r = results.get()
        if r is None:
            break
        if isinstance(r, BaseException):
            raise r
        if on_progress is not None and run_ref:
            on_progress({"done": len(run_ref[0].done), "total": run_ref[0].total, "deadNodes": dict(run_ref[0].dead)})
        yield r
    t.join()


def batch(tasks: Sequence[Dict[str, Any]], **kw: Any) -> List[Dict[str, Any]]:
    """:func:`batch_iter`, collected: the result dicts in the order they ended."""
    return list(batch_iter(tasks, **kw))
