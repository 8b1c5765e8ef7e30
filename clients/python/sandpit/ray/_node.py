"""A Sandpit daemon per Ray node: the actor that starts (or finds) it and runs that node's share of work."""
from __future__ import annotations

import asyncio
import atexit
import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .._async import AsyncClient
from ..errors import NotFoundError

NAMESPACE = "sandpit"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:   # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _reachable(path: str) -> bool:
    """Whether a Sandpit daemon answers on ``path`` (one ``server.info`` round trip)."""
    import socket
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b'{"jsonrpc":"2.0","id":0,"method":"server.info"}\n')
        return s.recv(1) != b""
    except OSError:
        return False
    finally:
        s.close()


class NodeDaemon:
    """One per Ray node (0 CPUs, pinned to its node). Uses ``socket`` (or ``SANDPIT_SOCKET``) when it names
    a running daemon, such as a system service's; otherwise starts ``sandpit serve`` with a data dir and
    socket of its own in a slot ``base_dir/<n>`` and stops it when the actor ends (it also dies with
    the actor's process)."""

    def __init__(self, sandpit: Optional[str] = None, socket: Optional[str] = None, base_dir: Optional[str] = None,
                 serve_args: Sequence[str] = ()) -> None:
        self.node_id = ray.get_runtime_context().get_node_id()
        self._proc: Optional[subprocess.Popen] = None
        self._client: Optional[AsyncClient] = None
        self._candidates: Any = None
        given = socket or os.environ.get("SANDPIT_SOCKET")
        if given:
            if not _reachable(given):
                raise RuntimeError(f"no Sandpit daemon answers at {given} on Ray node {self.node_id}")
            self.socket = given
            return
        home = self._claim_slot(base_dir or os.environ.get("SANDPIT_RAY_DIR") or "/tmp/sandpit-ray")
        self.socket = os.path.join(home, "sandpit.sock")
        if _reachable(self.socket):
            return   # the slot's daemon outlived the actor that started it: use it
        exe = sandpit or os.environ.get("SANDPIT_BIN") or shutil.which("sandpit")
        if not exe:
            raise RuntimeError(f"no `sandpit` executable on Ray node {self.node_id}: put it on PATH, set SANDPIT_BIN, "
                               "or pass sandpit=")
        log_path = os.path.join(home, "daemon.log")
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen([exe, "serve", "--socket", self.socket, "--data-dir", os.path.join(home, "data"),
                                           *serve_args], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          preexec_fn=_die_with_parent, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _reachable(self.socket):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                with open(log_path, "rb") as f:
                    tail = f.read()[-2000:].decode(errors="replace").strip()
                who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
                raise RuntimeError(f"`sandpit serve` did not start on Ray node {self.node_id} (running as {who}): {tail}\n"
                                   "Sandpit needs root, or subordinate ids for its rootless mode (see `sandpit doctor`); "
                                   "start Ray's workers as root, or run a daemon per host as a service and pass socket=")
            time.sleep(0.05)
        atexit.register(self._stop)

    def _claim_slot(self, base: str) -> str:
        """A data dir and socket for this node's daemon: the first slot ``base/<n>`` no live actor holds
        (its lock is released however the actor ends). A slot is reused, so a daemon that was killed
        with its node leaves nothing behind for long: the next daemon in its slot clears what it left
        (its store mount, its sandboxes) and keeps its templates."""
        os.makedirs(base, mode=0o755, exist_ok=True)
        for n in range(1024):
            home = os.path.join(base, str(n))
            os.makedirs(home, mode=0o755, exist_ok=True)
            fd = os.open(os.path.join(home, "actor.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.node_id}\n".encode())
            self._slot_lock = fd   # held for the actor's life
            return home
        raise RuntimeError(f"no free slot under {base} (1024 daemons on this host?)")

    async def _c(self) -> AsyncClient:
        if self._client is None:
            self._client = await AsyncClient.connect(self.socket)
        return self._client

    async def info(self) -> Dict[str, Any]:
        """The node and its daemon's capacity: its admission caps, free memory and CPUs."""
        si = await (await self._c()).call("server.info")
        cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == self.node_id), 0)
        mem = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem = int(line.split()[1]) * 1024
        caps = si.get("limits", {})
        capacity = max(1, min(int(cpus) or os.cpu_count() or 1, int(caps.get("maxSandboxes") or 1 << 30)))
        return {"node": self.node_id, "socket": self.socket, "started": self._proc is not None,
                "daemonPid": self._proc.pid if self._proc is not None else None,
                "cpus": cpus, "memoryAvailableBytes": mem, "limits": caps, "capacity": capacity,
                "rootless": bool(si.get("rootless"))}

    async def ensure_template(self, name: str, spec: Optional[str]) -> Dict[str, Any]:
        """The template on this node: found, or built from ``spec`` (the layer cache makes a rebuild cheap)."""
        c = await self._c()
        if spec is None:
            try:
                return await c.call("template.get", {"name": name})
            except NotFoundError as e:
                raise RuntimeError(f"template {name!r} does not exist on Ray node {self.node_id}: {e.message} "
                                   "(give its spec to build it on every node)") from None
        return await c.call("template.build", {"name": name, "spec": spec})

    async def run_tasks(self, tasks: List[Dict[str, Any]], indices: List[int], template: str, policy: str,
                        concurrency: int, output_bytes: int) -> AsyncIterator[Dict[str, Any]]:
        """Runs tasks with ``batch.run`` and yields each result as it ends (``index`` set from ``indices``,
        ``node`` naming this node)."""
        c = await self._c()
        out: "asyncio.Queue[Any]" = asyncio.Queue()

        def note(method: str, p: Dict[str, Any]) -> None:
            if method == "batch.result":
                r = dict(p["result"])
                i = p.get("index")
                if isinstance(i, int) and 0 <= i < len(indices):
                    r["index"] = indices[i]
                r["node"] = self.node_id
                out.put_nowait(r)

        call = asyncio.ensure_future(c.call("batch.run", {"tasks": tasks, "template": template, "policy": policy,
                                                          "concurrency": concurrency, "outputBytes": output_bytes},
                                            on_notification=note))
        call.add_done_callback(lambda _: out.put_nowait(None))
        while True:
            r = await out.get()
            if r is None:
                break
            yield r
        call.result()   # raises what ended the batch, if it failed
        while not out.empty():
            r = out.get_nowait()
            if r is not None:
                yield r

    async def run_candidate(self, code: str, tests: str, timeout: float, template: str, policy: str,
                            files: Dict[str, str], setup: List[str]) -> Dict[str, Any]:
        """One program against its tests (see :class:`~sandpit.ray.CodeRunner`)."""
        if self._candidates is None:
            from ._runner import Candidates
            self._candidates = Candidates(await self._c(), self.node_id)
        return await self._candidates.run(code, tests, timeout, template, policy, files, setup)

    def _stop(self) -> None:
        """Stops the daemon this actor started (its data stays for the slot's next daemon)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    async def stop(self) -> None:
        if self._candidates is not None:
            await self._candidates.close()
            self._candidates = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        self._stop()


def daemons(*, sandpit: Optional[str] = None, socket: Optional[str] = None, base_dir: Optional[str] = None,
            serve_args: Sequence[str] = ()) -> List["ray.actor.ActorHandle"]:
    """A :class:`NodeDaemon` on every alive Ray node (made once per node and driver; a second call finds
    them by name). Call ``ray.init`` first."""
    actor = ray.remote(num_cpus=0, max_concurrency=1000)(NodeDaemon)
    # One actor per node and configuration: the same arguments find the same actors.
    config = hashlib.sha256(repr((sandpit, socket, base_dir, tuple(serve_args))).encode()).hexdigest()[:8]
    handles = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        handles.append(actor.options(
            name=f"sandpit-daemon-{config}-{n['NodeID']}", namespace=NAMESPACE, get_if_exists=True, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False),
        ).remote(sandpit=sandpit, socket=socket, base_dir=base_dir, serve_args=tuple(serve_args)))
    if not _made:
        atexit.register(shutdown)
    _made.extend(h for h in handles if h not in _made)
    return handles


_made: List["ray.actor.ActorHandle"] = []


def shutdown(handles: Optional[List["ray.actor.ActorHandle"]] = None, timeout: float = 90) -> None:
    """Stops the node actors (``handles``, default: every one :func:`daemons` made in this process) and
    the daemons they started, cleanly: nothing left mounted or running. Runs at exit too. (Ray kills an
    actor's child processes with it; a daemon killed that way leaves its store for the next daemon in
    its slot to clear.)"""
    hs = list(_made) if handles is None else handles
    if not hs or not ray.is_initialized():
        return
    refs = [h.stop.remote() for h in hs]
    ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for h in hs:
        try:
            ray.kill(h)
        except Exception:   # already gone
            pass
        if h in _made:
            _made.remove(h)


def describe(handles: List["ray.actor.ActorHandle"]) -> List[Dict[str, Any]]:
    """Each node's :meth:`NodeDaemon.info`, in the order of ``handles``."""
    return ray.get([h.info.remote() for h in handles])


__all__ = ["NodeDaemon", "daemons", "describe", "shutdown", "NAMESPACE"]
