"""``CodeRunner``: score model-written programs from reward functions, at a fork per candidate."""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ray

from .._async import AsyncClient, AsyncSandbox
from ..errors import SandpitError
from ..models import CommandResult

_BASES = 64   # prepared problems kept per node (the least recently used base is deleted past it)


def _verdict(r: CommandResult, node: str, started: float, timeout: float) -> Dict[str, Any]:
    if r.timed_out:
        status, reason = "timeout", f"killed at its timeout ({int(timeout * 1000)} ms)"
    elif r.oom_killed:
        status, reason = "oom", "killed by the OOM killer at the memory limit"
    elif r.exit_code == 0:
        status, reason = "passed", None
    else:
        status = "failed"
        err = r.stderr.strip().splitlines()
        reason = f"exit {r.exit_code}" + (f": {err[-1]}" if err else "")
    return {"status": status, "reason": reason, "exitCode": r.exit_code, "stdout": r.stdout[-65536:],
            "stderr": r.stderr[-65536:], "durationMs": round((time.monotonic() - started) * 1000, 2), "node": node}


def _error(e: BaseException, node: str, started: float) -> Dict[str, Any]:
    return {"status": "error", "reason": str(e), "exitCode": None, "stdout": "", "stderr": "",
            "durationMs": round((time.monotonic() - started) * 1000, 2), "node": node}


class Candidates:
    """The node side: a base sandbox per prepared problem (its files written and setup run once,
    checkpointed), each candidate run in a copy-on-write fork of it, or in a fresh (warm-pool) sandbox
    when the problem has no setup."""

    def __init__(self, client: AsyncClient, node: str) -> None:
        self.c = client
        self.node = node
        self.bases: "collections.OrderedDict[str, asyncio.Future]" = collections.OrderedDict()

    async def _base(self, key: str, template: str, policy: str, files: Dict[str, str], setup: Sequence[str]) -> Tuple[str, str]:
        fut = self.bases.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self.bases[key] = fut
            try:
                sb = await AsyncSandbox.create(template, policy=policy, metadata={"sandpit.ray": "base"}, client=self.c)
                if files:
                    await sb.files.write_many(files)
                for cmd in setup:
                    r = await sb.commands.run(cmd)
                    if r.exit_code != 0:
                        await sb.delete()
                        raise RuntimeError(f"the problem's setup failed: {cmd!r} exited {r.exit_code}")
                ck = (await sb.checkpoints.create(name="problem")).checkpoint_id
                fut.set_result((sb.id, ck))
            except BaseException as e:
                self.bases.pop(key, None)
                fut.set_exception(e)
                fut.exception()   # retrieved: the callers that wait on it get it too
                raise
            while len(self.bases) > _BASES:
                _, old = self.bases.popitem(last=False)
                if old.done() and not old.exception():
                    try:
                        await self.c.call("sandbox.delete", {"sandboxId": old.result()[0]})
                    except SandpitError:
                        pass
        else:
            self.bases.move_to_end(key)
        return await asyncio.shield(fut)

    async def run(self, code: str, tests: str, timeout: float, template: str, policy: str,
                  files: Dict[str, str], setup: Sequence[str]) -> Dict[str, Any]:
        started = time.monotonic()
        try:
            if files or setup:
                key = hashlib.sha256(json.dumps([template, policy, files, list(setup)], sort_keys=True).encode()).hexdigest()
                base, ck = await self._base(key, template, policy, files, setup)
                sb = (await AsyncSandbox(self.c, {"sandboxId": base}).fork(1, checkpoint_id=ck))[0]
            else:
                sb = await AsyncSandbox.create(template, policy=policy, client=self.c)
        except (SandpitError, RuntimeError) as e:
            return _error(e, self.node, started)
        try:
            r = await sb.commands.run(["python3", "-"], stdin=code.rstrip("\n") + "\n\n" + tests, timeout=timeout)
            return _verdict(r, self.node, started, timeout)
        except SandpitError as e:
            return _error(e, self.node, started)
        finally:
            try:
                await sb.delete()
            except SandpitError:
                pass

    async def close(self) -> None:
        for fut in list(self.bases.values()):
            if fut.done() and not fut.exception():
                try:
                    await self.c.call("sandbox.delete", {"sandboxId": fut.result()[0]})
                except SandpitError:
                    pass
        self.bases.clear()


class CodeRunner:
    """Runs model-written programs against their tests on the cluster's node daemons; picklable, so a
    reward function inside a Ray task can hold one. ``run`` returns a verdict dict (``status`` passed,
    failed, timeout, oom or error; ``reason``, ``exitCode``, ``stdout``, ``stderr``, ``durationMs``,
    ``node``). A problem's ``files`` and ``setup`` (shell commands) are done once per node and each
    candidate runs in a copy-on-write fork of that prepared sandbox."""

    def __init__(self, *, template: str = "default", policy: str = "default", daemons: Optional[List[Any]] = None,
                 **daemon_args: Any) -> None:
        from ._node import daemons as _daemons
        if not ray.is_initialized():
            ray.init()
        self.template = template
        self.policy = policy
        self.handles = daemons if daemons is not None else _daemons(**daemon_args)
        self.nodes = ray.get([h.info.remote() for h in self.handles])
        self._next = 0

    def _handle(self) -> Any:
        # The daemon of the node this code runs on when there is one (no hop), else the next in turn.
        here = ray.get_runtime_context().get_node_id()
        for h, n in zip(self.handles, self.nodes):
            if n["node"] == here:
                return h
        self._next += 1
        return self.handles[self._next % len(self.handles)]

    def submit(self, code: str, tests: str = "", timeout: float = 10.0, *, files: Optional[Dict[str, str]] = None,
               setup: Sequence[str] = ()) -> "ray.ObjectRef":
        """Starts one candidate; ``ray.get`` the reference for its verdict."""
        return self._handle().run_candidate.remote(code, tests, timeout, self.template, self.policy, dict(files or {}),
                                                   list(setup))

    def run(self, code: str, tests: str = "", timeout: float = 10.0, **kw: Any) -> Dict[str, Any]:
        return ray.get(self.submit(code, tests, timeout, **kw))

    def map(self, candidates: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Verdicts of many candidates (dicts of ``run``'s arguments), run at once across the nodes."""
        # In proportion to the nodes' capacity.
        turns = [h for h, n in zip(self.handles, self.nodes) for _ in range(max(1, int(n["capacity"])))]
        refs = []
        for i, c in enumerate(candidates):
            h = turns[i % len(turns)]
            refs.append(h.run_candidate.remote(c["code"], c.get("tests", ""), c.get("timeout", 10.0), self.template,
                                               self.policy, dict(c.get("files") or {}), list(c.get("setup") or ())))
        return ray.get(refs)
