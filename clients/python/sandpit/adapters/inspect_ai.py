"""Sandpit as an Inspect sandbox environment (``pip install 'sandpit[inspect]'``).

    inspect eval task.py --sandbox sandpit                      # the default template
    inspect eval task.py --sandbox sandpit:Dockerfile           # a template built from this spec file
    Task(..., sandbox=("sandpit", SandpitConfig(template="sci", limits={"memoryBytes": 1 << 30})))

Inspect finds the provider through the ``inspect_ai`` entry point this package declares; nothing to
import. Each sample gets its own sandbox (``sample_init``), deleted at ``sample_cleanup`` however the
sample ended; all samples of a process share one multiplexed connection to the daemon
(``SANDPIT_SOCKET``, ``SandpitConfig.socket``, or a daemon of its own started as a child). A spec file
(``sandpit:Dockerfile``, or ``SandpitConfig(build=...)``) is built once per task (``task_init``), as
template ``inspect-<digest>``; an unchanged spec reuses the daemon's build cache.

``exec`` follows Inspect's contract: ``cmd[0]`` resolved on the sandbox's ``PATH`` (with ``env`` applied
first), relative ``cwd`` and file paths against the template's working directory, ``timeout`` raises
``TimeoutError`` (the command's whole tree is killed; it is not retried: a sandbox command that ran out
of time would again), output beyond Inspect's limit (``INSPECT_SANDBOX_MAX_EXEC_OUTPUT_SIZE``, 10 MiB)
raises ``OutputLimitExceededError`` with the output's tail. Commands run as the template's user;
another ``user`` raises ``SandboxUserUnsupportedError``. A sandbox the daemon lost (deleted, its daemon
gone) raises ``SandboxUnavailableError``.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
from typing import Any, Dict, List, Literal, Optional, Union, overload

from inspect_ai.util import (ExecResult, OutputLimitExceededError, SandboxEnvironment, SandboxEnvironmentConfigType,
                             sandboxenv)
from inspect_ai.util._sandbox.environment import SandboxUnavailableError, SandboxUserUnsupportedError
from pydantic import BaseModel

from .._async import AsyncClient, AsyncSandbox
from ..errors import NotFoundError, InvalidStateError, PermissionDeniedError, SandpitError, UnavailableError

METADATA = "sandpit.inspect"
DEFAULT_EXEC_OUTPUT = 10 * 1024 * 1024
DEFAULT_READ_FILE = 100 * 1024 * 1024


class SandpitConfig(BaseModel, frozen=True):
    """How Inspect's samples get their sandboxes. All optional."""

    template: str = "default"
    """A built template (``NAME[:TAG]``), unless ``build`` is given."""
    build: Optional[str] = None
    """A template spec file (Dockerfile subset) to build once per task and use instead of ``template``."""
    policy: str = "default"
    limits: Optional[Dict[str, Any]] = None
    """Narrow the policy for each sample's sandbox (``memoryBytes``, ``pids``, ``network``...)."""
    socket: Optional[str] = None
    """The daemon's socket; default ``SANDPIT_SOCKET``, else a daemon of this process's own."""


def _config(config: SandboxEnvironmentConfigType | None) -> SandpitConfig:
    if config is None:
        return SandpitConfig()
    if isinstance(config, SandpitConfig):
        return config
    if isinstance(config, str):
        return SandpitConfig(build=config)
    if isinstance(config, BaseModel):
        return SandpitConfig(**config.model_dump())
    raise ValueError(f"sandpit: unsupported sandbox config {config!r}: a spec file path or SandpitConfig")


def _limit(var: str, default: int) -> int:
    try:
        return int(os.environ.get(var, default))
    except ValueError:
        return default


class _Shared:
    """One connection per event loop and socket (Inspect runs its samples as tasks of one loop), made
    once however many samples start at the same moment; and the templates built per task."""

    clients: Dict[tuple, AsyncClient] = {}
    locks: Dict[tuple, asyncio.Lock] = {}
    templates: Dict[str, str] = {}   # spec file -> template name

    @classmethod
    async def client(cls, socket: Optional[str]) -> AsyncClient:
        key = (id(asyncio.get_running_loop()), socket or os.environ.get("SANDPIT_SOCKET"))
        lock = cls.locks.setdefault(key, asyncio.Lock())
        async with lock:
            c = cls.clients.get(key)
            if c is None:
                c = cls.clients[key] = await AsyncClient.connect(socket)
            return c

    @classmethod
    async def close(cls) -> None:
        loop = id(asyncio.get_running_loop())
        for key in [k for k in cls.clients if k[0] == loop]:
            c = cls.clients.pop(key)
            cls.locks.pop(key, None)
            await c.close()


def _unavailable(e: SandpitError) -> bool:
    return isinstance(e, (NotFoundError, InvalidStateError, UnavailableError))


@sandboxenv(name="sandpit")
class SandpitSandboxEnvironment(SandboxEnvironment):
    """One Sandpit sandbox per sample."""

    def __init__(self, sandbox: AsyncSandbox, workdir: str, user: Optional[str]) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.workdir = workdir
        self.user = user

    # ---- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def config_files(cls) -> List[str]:
        return ["sandpit.Dockerfile"]

    @classmethod
    def config_deserialize(cls, config: Dict[str, Any]) -> BaseModel:
        return SandpitConfig(**config)

    @classmethod
    def default_concurrency(cls) -> Optional[int]:
        """As many sandboxes at once as the daemon on ``SANDPIT_SOCKET`` admits (``--max-sandboxes``);
        None (no cap: the daemon queues what its memory budget cannot hold) when it sets none or there
        is no daemon to ask."""
        socket = os.environ.get("SANDPIT_SOCKET")
        if not socket:   # no daemon to ask (one would be started per process just for this)
            return None
        try:
            from ..sandbox import Client
            with Client(socket) as c:
                usage = c.call("server.info").get("usage", {})
        except Exception:
            return None
        caps = [int(x) for x in (usage.get("maxSandboxes"),) if x]
        return min(caps) if caps else None

    @classmethod
    async def task_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None) -> None:
        cfg = _config(config)
        if cfg.build:
            path = os.path.abspath(cfg.build)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:16]
            name = f"inspect-{digest}"
            c = await _Shared.client(cfg.socket)
            await c.call("template.build", {"name": name, "file": path})
            _Shared.templates[path] = name

    @classmethod
    async def sample_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                          metadata: Dict[str, str]) -> Dict[str, SandboxEnvironment]:
        cfg = _config(config)
        template = cfg.template
        if cfg.build:
            path = os.path.abspath(cfg.build)
            if path not in _Shared.templates:   # sample_init without task_init (Inspect's sandbox CLI)
                await cls.task_init(task_name, cfg)
            template = _Shared.templates[path]
        c = await _Shared.client(cfg.socket)
        sb = await AsyncSandbox.create(template, policy=cfg.policy, limits=cfg.limits, client=c,
                                       metadata={METADATA: task_name[:200]})
        try:
            probe = await sb.commands.run("pwd; id -un")
            workdir, user = (probe.stdout.split("\n") + ["", ""])[:2]
        except BaseException:
            await sb.delete()
            raise
        return {"default": cls(sb, workdir or "/home/user", user or None)}

    @classmethod
    async def sample_cleanup(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                             environments: Dict[str, SandboxEnvironment], interrupted: bool) -> None:
        for env in environments.values():
            if isinstance(env, SandpitSandboxEnvironment):
                try:
                    await env.sandbox.delete()
                except SandpitError:
                    pass   # already gone

    @classmethod
    async def task_cleanup(cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool) -> None:
        cfg = _config(config)
        if cleanup:
            c = await _Shared.client(cfg.socket)
            for s in await c.list_sandboxes(metadata={METADATA: task_name[:200]}):
                if s.get("state") != "deleted":
                    try:
                        await c.call("sandbox.delete", {"sandboxId": s["sandboxId"]})
                    except SandpitError:
                        pass
        await _Shared.close()

    @classmethod
    async def cli_cleanup(cls, id: Optional[str]) -> None:
        """``inspect sandbox cleanup sandpit [ID]``: deletes the sandboxes Inspect left (all, or one)."""
        c = await AsyncClient.connect()
        try:
            for s in await c.list_sandboxes():
                if METADATA in s.get("metadata", {}) and s.get("state") != "deleted" and id in (None, s["sandboxId"]):
                    await c.call("sandbox.delete", {"sandboxId": s["sandboxId"]})
        finally:
            await c.close()

    # ---- instance methods ------------------------------------------------------------------------

    def _path(self, path: str) -> str:
        return path if path.startswith("/") else os.path.join(self.workdir, path)

    async def exec(self, cmd: List[str], input: Union[str, bytes, None] = None, cwd: Optional[str] = None,
                   env: Optional[Dict[str, str]] = None, user: Optional[str] = None, timeout: Optional[int] = None,
                   timeout_retry: bool = True, concurrency: bool = True) -> ExecResult[str]:
        if user is not None and user != self.user:
            raise SandboxUserUnsupportedError(
                f"sandpit runs commands as the template's user ({self.user}); user={user!r} is not supported")
        if not cmd:
            raise ValueError("exec: empty command")
        try:
            r = await self.sandbox.commands.run(list(cmd), stdin=input if input is not None else None,
                                                cwd=self._path(cwd) if cwd else None, env=env,
                                                timeout=float(timeout) if timeout else None)
        except SandpitError as e:
            if _unavailable(e):
                raise SandboxUnavailableError(f"sandbox {self.sandbox.id}: {e}") from e
            if isinstance(e, PermissionDeniedError):
                raise PermissionError(str(e)) from e
            raise
        if r.timed_out:
            raise TimeoutError(f"command timed out after {timeout} s: {shlex.join(cmd)[:200]}")
        limit = _limit("INSPECT_SANDBOX_MAX_EXEC_OUTPUT_SIZE", DEFAULT_EXEC_OUTPUT)
        for stream, text in (("stdoutBytes", r.stdout), ("stderrBytes", r.stderr)):
            if r.raw.get(stream, len(text.encode())) > limit:
                raise OutputLimitExceededError(f"{limit} bytes", text.encode()[-limit:].decode(errors="replace"))
        spawn_error = r.raw.get("spawnError")
        return ExecResult(success=r.exit_code == 0, returncode=r.exit_code, stdout=r.stdout,
                          stderr=r.stderr if not spawn_error or r.stderr else spawn_error)

    async def write_file(self, file: str, contents: Union[str, bytes]) -> None:
        try:
            await self.sandbox.files.write(self._path(file), contents)
        except SandpitError as e:
            raise self._file_error(e, file) from e

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> Union[str, bytes]:
        path = self._path(file)
        limit = _limit("INSPECT_SANDBOX_MAX_READ_FILE_SIZE", DEFAULT_READ_FILE)
        try:
            info = await self.sandbox.files.stat(path)
            if info.type == "dir":
                raise IsADirectoryError(file)
            if info.size > limit:
                raise OutputLimitExceededError(f"{limit} bytes", None)
            data = await self.sandbox.files.read(path, format="bytes")
        except SandpitError as e:
            raise self._file_error(e, file) from e
        # Newlines as they are (\r\n stays), as open(..., newline="") reads them.
        return data.decode("utf-8") if text else data

    def _file_error(self, e: SandpitError, file: str) -> Exception:
        if e.data.get("errno") == "EISDIR" or e.data.get("type") == "dir":
            return IsADirectoryError(file)
        if isinstance(e, NotFoundError) and e.data.get("path") is not None:
            return FileNotFoundError(file)
        if isinstance(e, PermissionDeniedError):
            return PermissionError(f"{file}: {e.message}")
        if _unavailable(e):
            return SandboxUnavailableError(f"sandbox {self.sandbox.id}: {e}")
        return e

    # ---- Sandpit's own ---------------------------------------------------------------------------

    async def checkpoint(self, name: Optional[str] = None) -> int:
        """Checkpoints the sample's sandbox now; returns the step to restore later."""
        return (await self.sandbox.checkpoints.create(name)).step

    async def restore(self, step: int) -> None:
        """Puts the sample's sandbox back to an earlier step (files and interpreter state)."""
        await self.sandbox.restore(step)
