"""The OpenAI Agents SDK's sandbox client on Sandpit (``pip install 'sandpit[openai-agents]'``).

    from agents import Runner
    from agents.run_config import RunConfig, SandboxRunConfig
    from agents.sandbox import SandboxAgent
    from sandpit.adapters.openai_agents import SandpitSandboxClient, SandpitSandboxClientOptions

    agent = SandboxAgent(name="coder", instructions="...")
    result = await Runner.run(agent, "task", run_config=RunConfig(sandbox=SandboxRunConfig(
        client=SandpitSandboxClient(), options=SandpitSandboxClientOptions(template="default"))))

Each session is one Sandpit sandbox, made from ``options.template`` under ``options.policy``. The
workspace root (``Manifest.root``, ``/workspace`` by default) belongs to the sandbox's user. The SDK's
own tools run there: ``exec_command`` and ``write_stdin`` on Sandpit's yielding execs (``tty=true`` is a
real terminal of the sandbox, Ctrl-C included), ``apply_patch`` and ``view_image`` on its file API.

Snapshots (``SandboxRunConfig(snapshot=LocalSnapshotSpec(...))``): with ``workspace_persistence=
"checkpoint"`` (the default) ``persist_workspace`` takes a Sandpit checkpoint and keeps it as a hibernated
fork of the sandbox (a copy-on-write clone: nothing is archived, and everything outside the workspace,
installed packages included, comes back too); what the SDK stores is a small reference to it, and
``hydrate_workspace`` forks from it. A reference lives as long as that fork: a day unused by default
(``snapshot_retention_s``; ``sandpit ps -a`` lists them, hibernated, with metadata
``openai-agents.role=snapshot``); deleting a session deletes the forks it made but its last. The Runner
persists a snapshot at the end of every run (the SDK's default ``LocalSnapshotSpec``, for resuming a
``RunState``), so each run leaves one such fork; pass ``snapshot=NoopSnapshotSpec()`` to keep none. With
``"tar"`` the workspace travels as a portable tar archive instead (to another machine, or another backend).

Users: a Sandpit sandbox has two, ``"user"`` (the default) and ``"root"`` (a container root's
capabilities); ``run_as`` and the tools' ``user`` name one of them. Exposed ports are not supported yet
(``resolve_exposed_port`` says so through the SDK's ``ExposedPortUnavailableError``).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
import uuid
import weakref
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

from agents.sandbox.errors import (ExecTimeoutError, ExecTransportError, ExposedPortUnavailableError,
                                   PtySessionNotFoundError, WorkspaceArchiveReadError, WorkspaceArchiveWriteError,
                                   WorkspaceReadNotFoundError)
from agents.sandbox.manifest import Manifest
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.pty_types import (PtyExecUpdate, allocate_pty_process_id, clamp_pty_yield_time_ms,
                                              resolve_pty_write_yield_time_ms, truncate_text_by_tokens)
from agents.sandbox.session.sandbox_client import BaseSandboxClient, BaseSandboxClientOptions
from agents.sandbox.session.sandbox_session import SandboxSession
from agents.sandbox.session.sandbox_session_state import SandboxSessionState
from agents.sandbox.session.workspace_payloads import coerce_write_payload
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, ExposedPortEndpoint, User
from agents.sandbox.util.tar_utils import UnsafeTarMemberError, validate_tarfile

from .._async import AsyncClient, AsyncSandbox
from ..errors import NotFoundError, SandpitError
from ..models import CommandPoll

#: The first line of what ``persist_workspace`` returns in checkpoint mode.
REFERENCE_MAGIC = b"sandpit-workspace-reference/1\n"
#: Metadata of every sandbox this client makes: the SDK session's id, and "session" or "snapshot".
SESSION_KEY, ROLE_KEY = "openai-agents.session", "openai-agents.role"
_USERS = {"user", "root"}
_TERMINAL = {"rows": 24, "cols": 80}
_SCRATCH = "/tmp/.sandpit-openai-agents"


class SandpitSandboxClientOptions(BaseSandboxClientOptions):
    """How a new session's sandbox is made: a Sandpit ``template`` and ``policy`` (narrowed by
    ``limits``, e.g. ``{"memoryBytes": 1 << 30}``), and how its workspace is persisted."""

    type: Literal["sandpit"] = "sandpit"
    template: str = "default"
    policy: str = "default"
    limits: Optional[Dict[str, Any]] = None
    workspace_persistence: Literal["checkpoint", "tar"] = "checkpoint"
    #: How long a checkpoint-mode snapshot is kept without use (``None``: the policy's retention).
    snapshot_retention_s: Optional[float] = 86_400


class SandpitSandboxSessionState(SandboxSessionState):
    """What the SDK keeps of a session (``RunState``): enough to find the sandbox again."""

    type: Literal["sandpit"] = "sandpit"
    sandbox_id: str = ""
    template: str = "default"
    policy: str = "default"
    limits: Optional[Dict[str, Any]] = None
    workspace_persistence: Literal["checkpoint", "tar"] = "checkpoint"
    snapshot_retention_s: Optional[float] = 86_400


class _Connections:
    """One multiplexed connection per event loop (``Runner.run_sync`` makes a loop per run), made once
    even when a loop's first calls come in parallel."""

    def __init__(self, socket: Optional[str], client: Optional[AsyncClient]) -> None:
        self._socket = socket
        self._given = client
        self._by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[AsyncClient]]" = \
            weakref.WeakKeyDictionary()

    async def get(self) -> AsyncClient:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        task = self._by_loop.get(loop)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None
                                             or task.result().connection.closed)):
            task = loop.create_task(AsyncClient.connect(self._socket))
            self._by_loop[loop] = task
        return await asyncio.shield(task)


def _user(user: Union[str, User, None]) -> Optional[str]:
    name = user.name if isinstance(user, User) else user
    if name is None:
        return None
    if name not in _USERS:
        raise ExecTransportError(command=(), message=f"a Sandpit sandbox runs commands as 'user' or 'root', "
                                                     f"not {name!r}", context={"user": name})
    return name


class SandpitSandboxSession(BaseSandboxSession):
    """A session of the Agents SDK whose commands and files are those of one Sandpit sandbox."""

    state: SandpitSandboxSessionState

    def __init__(self, *, state: SandpitSandboxSessionState, connections: _Connections) -> None:
        self.state = state
        self._connections = connections
        self._root_ready = state.workspace_root_ready
        self._pty: Dict[int, Tuple[str, int]] = {}           # process id -> (exec id, next seq)
        self._pty_lock = asyncio.Lock()
        self._holders: List[str] = []                       # snapshot forks this session made

    async def _sandbox(self, sandbox_id: Optional[str] = None) -> AsyncSandbox:
        return AsyncSandbox(await self._connections.get(), {"sandboxId": sandbox_id or self.state.sandbox_id})

    # -- lifecycle -----------------------------------------------------------------------------------

    async def _prepare_backend_workspace(self) -> None:
        # The root may sit anywhere (``/workspace`` by default): made by the sandbox's root, owned by its user.
        root = self.state.manifest.root
        r = await (await self._sandbox()).commands.run(
            ["/bin/sh", "-c", 'mkdir -p -- "$1" && chown user: -- "$1"', "sh", root], user="root")
        if r.exit_code != 0:
            raise WorkspaceArchiveWriteError(path=Path(root), context={"stderr": r.stderr})
        self._root_ready = True

    def _mark_workspace_root_ready_from_probe(self) -> None:
        super()._mark_workspace_root_ready_from_probe()
        self._root_ready = True

    async def running(self) -> bool:
        # A paused or hibernated sandbox wakes on its next call: it is there to be used.
        if not self.state.sandbox_id:
            return False
        try:
            info = await (await self._sandbox()).refresh()
        except NotFoundError:
            return False
        return info.get("state") not in ("deleted", "failed")

    def supports_pty(self) -> bool:
        return True

    async def _resolve_exposed_port(self, port: int) -> ExposedPortEndpoint:
        raise ExposedPortUnavailableError(port=port, exposed_ports=self.state.exposed_ports,
                                          reason="backend_unavailable",
                                          context={"backend": "sandpit", "hint": "use `sandpit expose`"})

    # -- commands ------------------------------------------------------------------------------------

    async def exec(self, *command: Union[str, Path], timeout: Optional[float] = None,
                   shell: Union[bool, List[str]] = True, user: Union[str, User, None] = None) -> ExecResult:
        # Sandpit runs a command as either of its users itself: no sudo in the sandbox.
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        return await self._run(argv, timeout, _user(user))

    async def _exec_internal(self, *command: Union[str, Path], timeout: Optional[float] = None) -> ExecResult:
        return await self._run([str(c) for c in command], timeout, None)

    async def _run(self, argv: List[str], timeout: Optional[float], user: Optional[str],
                   stdin: Optional[bytes] = None) -> ExecResult:
        try:
            r = await (await self._sandbox()).commands.run(
                argv, cwd=self.state.manifest.root if self._root_ready else None, user=user, timeout=timeout,
                stdin=stdin)
        except SandpitError as e:
            raise ExecTransportError(command=argv, cause=e, context={"code": e.code}) from e
        if r.timed_out:
            raise ExecTimeoutError(command=argv, timeout_s=timeout)
        return ExecResult(stdout=r.stdout.encode(), stderr=r.stderr.encode(), exit_code=r.exit_code)

    async def pty_exec_start(self, *command: Union[str, Path], timeout: Optional[float] = None,
                             shell: Union[bool, List[str]] = True, user: Union[str, User, None] = None,
                             tty: bool = False, yield_time_s: Optional[float] = None,
                             max_output_tokens: Optional[int] = None) -> PtyExecUpdate:
        """Starts a command that may outlive this call (the SDK's ``exec_command``): its output for up to
        ``yield_time_s``, then a process id to poll or type into with :meth:`pty_write_stdin`."""
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        yield_ms = clamp_pty_yield_time_ms(10_000 if yield_time_s is None else int(yield_time_s * 1000))
        p: Dict[str, Any] = {"cmd": argv, "yieldMs": yield_ms, "stdin": "pipe"}
        if self._root_ready:
            p["cwd"] = self.state.manifest.root
        if tty:
            p["pty"] = dict(_TERMINAL)
            del p["stdin"]
        if timeout is not None:
            p["timeoutMs"] = int(timeout * 1000)
        name = _user(user)
        if name:
            p["user"] = name
        try:
            poll = CommandPoll.from_wire(await (await self._sandbox())._call("exec.run", p))
        except SandpitError as e:
            raise ExecTransportError(command=argv, cause=e, context={"code": e.code}) from e
        async with self._pty_lock:
            pid = allocate_pty_process_id(set(self._pty))
            if poll.running:
                self._pty[pid] = (poll.exec_id, poll.next_seq)
        return _update(pid, poll, max_output_tokens)

    async def pty_write_stdin(self, *, session_id: int, chars: str, yield_time_s: Optional[float] = None,
                              max_output_tokens: Optional[int] = None) -> PtyExecUpdate:
        async with self._pty_lock:
            entry = self._pty.get(session_id)
        if entry is None:
            raise PtySessionNotFoundError(session_id=session_id)
        exec_id, since = entry
        sb = await self._sandbox()
        try:
            if chars:
                await sb._call("exec.input", {"execId": exec_id, "data": chars})
            yield_ms = resolve_pty_write_yield_time_ms(
                yield_time_ms=250 if yield_time_s is None else int(yield_time_s * 1000), input_empty=chars == "")
            poll = CommandPoll.from_wire(await sb._call("exec.wait", {"execId": exec_id, "yieldMs": yield_ms,
                                                                      "sinceSeq": since}))
        except NotFoundError:
            async with self._pty_lock:
                self._pty.pop(session_id, None)
            raise PtySessionNotFoundError(session_id=session_id) from None
        except SandpitError as e:
            raise ExecTransportError(command=(), cause=e, context={"code": e.code, "execId": exec_id}) from e
        async with self._pty_lock:
            if poll.running:
                self._pty[session_id] = (exec_id, poll.next_seq)
            else:
                self._pty.pop(session_id, None)
        return _update(session_id, poll, max_output_tokens)

    async def pty_terminate_all(self) -> None:
        async with self._pty_lock:
            entries = list(self._pty.values())
            self._pty.clear()
        if not entries or not self.state.sandbox_id:
            return
        sb = await self._sandbox()
        for exec_id, _ in entries:
            try:
                await sb._call("exec.kill", {"execId": exec_id})
            except SandpitError:
                pass   # it had ended already

    # -- files ---------------------------------------------------------------------------------------

    async def read(self, path: Path, *, user: Union[str, User, None] = None) -> io.IOBase:
        if user is not None:
            await self._check_read_with_exec(path, user=user)
        target = await self._validate_path_access(path)
        try:
            data = await (await self._sandbox()).files.read(target.as_posix(), format="bytes")
        except NotFoundError as e:
            raise WorkspaceReadNotFoundError(path=path, cause=e) from e
        except SandpitError as e:
            raise WorkspaceArchiveReadError(path=path, cause=e, context={"code": e.code}) from e
        assert isinstance(data, bytes)
        return io.BytesIO(data)

    async def _read_bounded(self, path: Path, *, max_bytes: int) -> bytes:
        target = await self._validate_path_access(path)
        try:
            r = await (await self._sandbox())._call("fs.read", {"path": target.as_posix(),
                                                                "length": min(max_bytes, 16 << 20)})
        except NotFoundError as e:
            raise WorkspaceReadNotFoundError(path=path, cause=e) from e
        return base64.b64decode(r["data"])

    async def write(self, path: Path, data: io.IOBase, *, user: Union[str, User, None] = None) -> None:
        payload = coerce_write_payload(path=path, data=data)
        target = await self._validate_path_access(path, for_write=True)
        blob = payload.stream.read()
        sb = await self._sandbox()
        try:
            if user is None:
                await sb.files.write(target.as_posix(), blob)
                return
            # As another user: that user's own permissions decide, so a process of theirs writes it.
            r = await self._run(["/bin/sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"', "sh",
                                 target.as_posix()], None, _user(user), stdin=blob)
            if r.exit_code != 0:
                raise WorkspaceArchiveWriteError(path=target, context={"stderr": r.stderr.decode(errors="replace")})
        except SandpitError as e:
            raise WorkspaceArchiveWriteError(path=target, cause=e, context={"code": e.code}) from e

    # -- snapshots -----------------------------------------------------------------------------------

    async def persist_workspace(self) -> io.IOBase:
        if self.state.workspace_persistence == "tar":
            return io.BytesIO(await self._workspace_tar())
        sb = await self._sandbox()
        try:
            ck = await sb.checkpoints.create(name=f"openai-agents-{uuid.uuid4().hex[:16]}")
            retention = self.state.snapshot_retention_s
            holder = (await sb.fork(1, checkpoint_id=ck.checkpoint_id,
                                    idle=None if retention is None else {"deleteAfterMs": int(retention * 1000)},
                                    metadata=_metadata(self.state, "snapshot")))[0]
            await holder.hibernate()
        except SandpitError as e:
            raise WorkspaceArchiveReadError(path=Path(self.state.manifest.root), cause=e,
                                            context={"code": e.code}) from e
        self._holders.append(holder.id)
        ref = {"sandboxId": holder.id, "from": self.state.sandbox_id, "checkpointId": ck.checkpoint_id, "step": ck.step,
               "root": self.state.manifest.root}
        return io.BytesIO(REFERENCE_MAGIC + json.dumps(ref).encode())

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        blob = _read_all(data)
        if blob.startswith(REFERENCE_MAGIC):
            await self._adopt_fork_of(json.loads(blob[len(REFERENCE_MAGIC):]))
            return
        await self._extract_tar(blob)

    async def _restore_snapshot_into_workspace_on_resume(self) -> None:
        archive = await self.state.snapshot.restore(dependencies=self.dependencies)
        try:
            blob = _read_all(archive)
        finally:
            archive.close()
        if blob.startswith(REFERENCE_MAGIC):
            # The whole sandbox as it was: nothing to clear first.
            await self._adopt_fork_of(json.loads(blob[len(REFERENCE_MAGIC):]))
            return
        await self._clear_workspace_root_on_resume()
        await self._extract_tar(blob)

    async def _adopt_fork_of(self, ref: Dict[str, Any]) -> None:
        """This session's sandbox becomes a fork of the snapshot's; the one it had is deleted."""
        root = Path(self.state.manifest.root)
        try:
            fork = (await (await self._sandbox(ref["sandboxId"])).fork(1, metadata=_metadata(self.state, "session")))[0]
        except NotFoundError as e:
            raise WorkspaceArchiveWriteError(
                path=root, cause=e, message=f"the Sandpit snapshot {ref['sandboxId']} is gone (deleted, or past "
                                            "its retention); persist with workspace_persistence='tar' for snapshots "
                                            "that must outlive Sandpit's retention",
                context={"reason": "sandpit_snapshot_gone", "sandboxId": ref["sandboxId"]}) from e
        except SandpitError as e:
            raise WorkspaceArchiveWriteError(path=root, cause=e, context={"code": e.code}) from e
        old, self.state.sandbox_id = self.state.sandbox_id, fork.id
        if old:
            try:
                await (await self._sandbox(old)).delete()
            except NotFoundError:
                pass

    async def _workspace_tar(self) -> bytes:
        root = self.state.manifest.root
        excludes = [f"--exclude=./{p.as_posix()}" for p in sorted(self._persist_workspace_skip_relpaths())]
        out = f"{_SCRATCH}/persist-{uuid.uuid4().hex}.tar"
        r = await self._run(["/bin/sh", "-c", 'mkdir -p "$1" && out="$2" && shift 2 && tar -cf "$out" "$@"', "sh",
                             _SCRATCH, out, *excludes, "-C", root, "."], None, None)
        sb = await self._sandbox()
        try:
            if r.exit_code != 0:
                raise WorkspaceArchiveReadError(path=Path(root), context={"stderr": r.stderr.decode(errors="replace")})
            data = await sb.files.read(out, format="bytes")
            assert isinstance(data, bytes)
            return data
        finally:
            try:
                await sb.files.remove(out)
            except SandpitError:
                pass

    async def _extract_tar(self, blob: bytes) -> None:
        root = Path(self.state.manifest.root)
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                validate_tarfile(tar, allow_external_symlink_targets=False)
        except UnsafeTarMemberError as e:
            raise WorkspaceArchiveWriteError(path=root, context={"reason": e.reason, "member": e.member},
                                             cause=e) from e
        except (tarfile.TarError, OSError) as e:
            raise WorkspaceArchiveWriteError(path=root, cause=e) from e
        scratch = f"{_SCRATCH}/hydrate-{uuid.uuid4().hex}.tar"
        sb = await self._sandbox()
        await sb.files.write(scratch, blob)
        r = await self._run(["/bin/sh", "-c", 'mkdir -p -- "$2" && tar -xf "$1" -C "$2"; s=$?; rm -f -- "$1"; exit $s',
                             "sh", scratch, root.as_posix()], None, None)
        if r.exit_code != 0:
            raise WorkspaceArchiveWriteError(path=root, context={"stderr": r.stderr.decode(errors="replace")})


def _metadata(state: SandboxSessionState, role: str) -> Dict[str, str]:
    return {SESSION_KEY: str(state.session_id), ROLE_KEY: role}


def _read_all(data: io.IOBase) -> bytes:
    chunks = []
    while True:
        c = data.read(1 << 20)
        if not c:
            return b"".join(chunks)
        chunks.append(c.encode() if isinstance(c, str) else bytes(c))


def _update(pid: int, poll: CommandPoll, max_output_tokens: Optional[int]) -> PtyExecUpdate:
    text, original = truncate_text_by_tokens(poll.stdout + poll.stderr, max_output_tokens)
    return PtyExecUpdate(process_id=pid if poll.running else None, output=text.encode(errors="replace"),
                         exit_code=None if poll.result is None else poll.result.exit_code,
                         original_token_count=original)


class SandpitSandboxClient(BaseSandboxClient[Optional[SandpitSandboxClientOptions]]):
    """Makes, finds and deletes the sandboxes of the SDK's sessions. ``socket``: the daemon's (default
    ``SANDPIT_SOCKET``, else a child ``sandpit serve``); or pass a connected ``client``."""

    backend_id = "sandpit"
    supports_default_options = True

    def __init__(self, *, socket: Optional[str] = None, client: Optional[AsyncClient] = None,
                 instrumentation: Optional[Instrumentation] = None, dependencies: Any = None) -> None:
        self._connections = _Connections(socket, client)
        self._instrumentation = instrumentation if instrumentation is not None else Instrumentation()
        self._dependencies = dependencies

    async def create(self, *, snapshot: Union[SnapshotSpec, SnapshotBase, None] = None,
                     manifest: Optional[Manifest] = None,
                     options: Optional[SandpitSandboxClientOptions] = None) -> SandboxSession:
        opts = options if options is not None else SandpitSandboxClientOptions()
        manifest = self._validate_manifest_for_create(manifest if manifest is not None else Manifest())
        session_id = uuid.uuid4()
        state = SandpitSandboxSessionState(session_id=session_id, manifest=manifest,
                                           snapshot=resolve_snapshot(snapshot, str(session_id)),
                                           template=opts.template, policy=opts.policy, limits=opts.limits,
                                           workspace_persistence=opts.workspace_persistence,
                                           snapshot_retention_s=opts.snapshot_retention_s)
        state.sandbox_id = await self._new_sandbox(state)
        inner = SandpitSandboxSession(state=state, connections=self._connections)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    async def _new_sandbox(self, state: SandpitSandboxSessionState) -> str:
        c = await self._connections.get()
        sb = await AsyncSandbox.create(state.template, policy=state.policy, limits=state.limits, client=c,
                                       metadata=_metadata(state, "session"))
        return sb.id

    async def delete(self, session: SandboxSession) -> SandboxSession:
        inner = session._inner
        if not isinstance(inner, SandpitSandboxSession):
            raise TypeError("SandpitSandboxClient.delete expects a SandpitSandboxSession")
        c = await self._connections.get()
        # The sandbox, and every snapshot fork this session made but the last (which its state may name).
        for sid in [inner.state.sandbox_id, *inner._holders[:-1]]:
            if sid:
                try:
                    await c.call("sandbox.delete", {"sandboxId": sid})
                except NotFoundError:
                    pass
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        if not isinstance(state, SandpitSandboxSessionState):
            raise TypeError("SandpitSandboxClient.resume expects a SandpitSandboxSessionState")
        state.assert_path_grants_rebound()
        c = await self._connections.get()
        alive = False
        if state.sandbox_id:
            try:
                alive = (await c.call("sandbox.get", {"sandboxId": state.sandbox_id})).get("state") not in (
                    "deleted", "failed")
            except NotFoundError:
                alive = False
        if not alive:
            # Gone (deleted, or past retention): a new sandbox, which start() fills from the snapshot.
            state.sandbox_id = await self._new_sandbox(state)
            state.workspace_root_ready = False
        inner = SandpitSandboxSession(state=state, connections=self._connections)
        inner._set_start_state_preserved(alive)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    def deserialize_session_state(self, payload: Dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, SandpitSandboxSessionState)


__all__: Sequence[str] = ["SandpitSandboxClient", "SandpitSandboxClientOptions", "SandpitSandboxSession",
                          "SandpitSandboxSessionState"]
