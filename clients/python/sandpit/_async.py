"""The asyncio API: :class:`AsyncClient` (one connection) and :class:`AsyncSandbox`."""
from __future__ import annotations

import asyncio
import base64
import inspect
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from ._connection import AsyncConnection, decode_chunk
from .errors import InvalidParamsError, SandpitError
from .models import Checkpoint, CommandPoll, CommandResult, EntryInfo, Execution, FileEvent, Logs, RestoreResult

OutputCallback = Callable[[str], Any]
ResultCallback = Callable[[Any], Any]
Params = Dict[str, Any]

_UPLOAD_CHUNK = 4 << 20


def _ms(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else max(1, int(seconds * 1000))


def _drop_none(d: Params) -> Params:
    return {k: v for k, v in d.items() if v is not None}


def _route(chunk: Params, out: List[str], err: List[str], on_stdout: Optional[OutputCallback],
           on_stderr: Optional[OutputCallback]) -> Any:
    """Keeps an output chunk in its stream's list and passes it to that stream's callback (whose
    result, if awaitable, the caller awaits before the next chunk)."""
    if chunk.get("stream") == "stdin":   # what was typed into a terminal (exec.logs replays it)
        return None
    text = decode_chunk(chunk).decode(errors="replace")
    if chunk.get("stream") == "stderr":
        err.append(text)
        return on_stderr(text) if on_stderr else None
    out.append(text)
    return on_stdout(text) if on_stdout else None


class AsyncClient:
    """A connection to a Sandpit daemon; many requests may be in flight on it at once.

    ``await AsyncClient.connect()`` uses ``SANDPIT_SOCKET`` (or ``socket``); without a socket it starts
    ``sandpit serve`` as a child over stdin/stdout (which deletes its sandboxes when it exits)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    @classmethod
    async def connect(cls, socket: Optional[str] = None, *, sandpit: Optional[str] = None,
                      serve_args: Sequence[str] = ()) -> "AsyncClient":
        return cls(await AsyncConnection.open(socket, sandpit=sandpit, serve_args=serve_args))

    async def call(self, method: str, params: Optional[Params] = None, **kw: Any) -> Any:
        """A raw JSON-RPC call (for methods this package does not wrap)."""
        return await self.connection.call(method, params, **kw)

    async def info(self) -> Params:
        return await self.call("server.info")

    async def create_sandbox(self, template: str = "default", **kw: Any) -> "AsyncSandbox":
        return await AsyncSandbox.create(template, client=self, **kw)

    async def list_sandboxes(self, *, state: Optional[str] = None, metadata: Optional[Dict[str, str]] = None) -> List[Params]:
        out: List[Params] = []
        cursor = None
        while True:
            r = await self.call("sandbox.list", _drop_none({"state": state, "metadata": metadata, "limit": 1000, "cursor": cursor}))
            out += r["sandboxes"]
            cursor = r.get("nextCursor")
            if not cursor:
                return out

    async def batch(self, tasks: List[Params], *, template: str = "default", policy: str = "default",
                    concurrency: Optional[int] = None, limits: Optional[Params] = None,
                    on_result: Optional[ResultCallback] = None, on_progress: Optional[ResultCallback] = None) -> Params:
        """Runs tasks (``{"id", "cmd" | "code", "timeoutMs"?, "files"?, "setup"?, "expect"?}``) each in its
        own fresh sandbox, ``concurrency`` at a time. ``on_result(result)`` gets each result line as it
        ends; returns the summary (counts by status, ``tasksPerSecond``)."""
        def note(method: str, p: Params) -> Any:
            if method == "batch.result" and on_result:
                return on_result(p["result"])
            if method == "batch.progress" and on_progress:
                return on_progress(p)
        return await self.call("batch.run", _drop_none({"tasks": tasks, "template": template, "policy": policy,
                                                        "concurrency": concurrency, "limits": limits}), on_notification=note)

    async def close(self) -> None:
        await self.connection.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AsyncCommandHandle:
    """A command started with ``background=True``."""

    def __init__(self, sandbox: "AsyncSandbox", exec_id: str) -> None:
        self.sandbox = sandbox
        self.exec_id = exec_id
        #: Where the next :meth:`poll` starts; the first poll of ``run(..., yield_ms=)``.
        self.next_seq = 0
        self.first: Optional[CommandPoll] = None

    async def wait(self, *, on_stdout: Optional[OutputCallback] = None, on_stderr: Optional[OutputCallback] = None,
                   poll: float = 0.05) -> CommandResult:
        """Waits for the command to end, passing its output to the callbacks as it comes."""
        since, out, err = 0, [], []
        while True:
            r = await self.sandbox._call("exec.logs", {"execId": self.exec_id, "sinceSeq": since})
            for c in r["chunks"]:
                pending = _route(c, out, err, on_stdout, on_stderr)
                if inspect.isawaitable(pending):
                    await pending
                since = c["seq"] + 1
            if r["done"]:
                return CommandResult.from_wire(r.get("result") or {}, "".join(out), "".join(err))
            if not r["chunks"]:
                await asyncio.sleep(poll)
                poll = min(poll * 2, 0.5)

    async def kill(self, signal: Union[str, int] = "SIGKILL") -> None:
        await self.sandbox._call("exec.kill", {"execId": self.exec_id, "signal": signal})

    async def send_stdin(self, data: Union[str, bytes]) -> None:
        """Writes to the command's stdin (started with ``stdin=True``). Waits while the command does not
        read (up to 10 s, then :class:`LimitExceededError`)."""
        await self.sandbox._call("exec.input", _input(self.exec_id, data))

    async def close_stdin(self) -> None:
        """Closes the command's stdin: it reads end-of-file."""
        await self.sandbox._call("exec.input", {"execId": self.exec_id, "eof": True})

    async def poll(self, yield_ms: int = 1000, *, max_output_bytes: Optional[int] = None) -> CommandPoll:
        """The output since the last poll, gathered for up to ``yield_ms`` or until the command ends (the
        shape an LLM tool call wants: ``poll.running``, ``poll.stdout``, and once ended ``poll.result``)."""
        r = await self.sandbox._call("exec.wait", _drop_none({"execId": self.exec_id, "yieldMs": yield_ms,
                                                              "sinceSeq": self.next_seq, "maxOutputBytes": max_output_bytes}))
        poll = CommandPoll.from_wire(r)
        self.next_seq = poll.next_seq
        return poll


def _input(exec_id: str, data: Union[str, bytes]) -> Params:
    if isinstance(data, bytes):
        return {"execId": exec_id, "dataBase64": base64.b64encode(data).decode()}
    return {"execId": exec_id, "data": data}


class AsyncPtyHandle:
    """A command on a terminal (:meth:`AsyncPty.create`): its output goes to ``on_data`` (bytes) as it
    comes; type into it with :meth:`send_input` (``"\\x03"`` is Ctrl-C)."""

    def __init__(self, sandbox: "AsyncSandbox", exec_id: str, follow: "asyncio.Task[Params]") -> None:
        self.sandbox = sandbox
        self.exec_id = exec_id
        self._follow = follow

    async def send_input(self, data: Union[str, bytes]) -> None:
        await self.sandbox._call("exec.input", _input(self.exec_id, data))

    async def resize(self, rows: int, cols: int) -> None:
        """Sets the terminal's size; its foreground program gets SIGWINCH."""
        await self.sandbox._call("exec.resize", {"execId": self.exec_id, "rows": rows, "cols": cols})

    async def kill(self, signal: Union[str, int] = "SIGKILL") -> None:
        await self.sandbox._call("exec.kill", {"execId": self.exec_id, "signal": signal})

    async def wait(self) -> CommandResult:
        """Waits for the command to end; its terminal output went to ``on_data``."""
        return CommandResult.from_wire(await self._follow, "", "")


class AsyncPty:
    """``sandbox.pty``: commands on a pseudo-terminal of the sandbox."""

    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sb = sandbox

    async def create(self, rows: int = 24, cols: int = 80, on_data: Optional[Callable[[bytes], Any]] = None, *,
                     cmd: Union[str, Sequence[str]] = ("bash", "-i"), env: Optional[Dict[str, str]] = None,
                     cwd: Optional[str] = None, timeout: Optional[float] = None) -> AsyncPtyHandle:
        """Starts ``cmd`` (default an interactive bash) on a new terminal of ``rows`` x ``cols``."""
        p: Params = {"shell": cmd} if isinstance(cmd, str) else {"cmd": list(cmd)}
        p.update(_drop_none({"env": env, "cwd": cwd, "timeoutMs": _ms(timeout)}))
        p["pty"] = {"rows": rows, "cols": cols}
        p["yieldMs"] = 0
        r = await self._sb._call("exec.run", p)
        exec_id = r["execId"]

        def deliver(chunk: Params) -> Any:
            if on_data is not None and chunk.get("stream") != "stdin":
                return on_data(decode_chunk(chunk))

        for c in r.get("chunks", []):
            pending = deliver(c)
            if inspect.isawaitable(pending):
                await pending

        def note(method: str, n: Params) -> Any:
            if method == "exec.output":
                return deliver(n)
        follow = asyncio.get_running_loop().create_task(self._sb._call(
            "exec.wait", {"execId": exec_id, "follow": True, "sinceSeq": r.get("nextSeq", 0)}, on_notification=note))
        return AsyncPtyHandle(self._sb, exec_id, follow)


class AsyncCommands:
    """``sandbox.commands``: run programs in the sandbox."""

    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sb = sandbox

    async def run(self, cmd: Union[str, Sequence[str]], *, background: bool = False, env: Optional[Dict[str, str]] = None,
                  cwd: Optional[str] = None, user: Optional[str] = None, stdin: Optional[Union[str, bytes, bool]] = None,
                  timeout: Optional[float] = None,
                  on_stdout: Optional[OutputCallback] = None, on_stderr: Optional[OutputCallback] = None,
                  yield_ms: Optional[int] = None, max_output_bytes: Optional[int] = None,
                  ) -> Union[CommandResult, AsyncCommandHandle]:
        """Runs ``cmd`` (a shell string for ``bash -c``, or an argv list). Returns its
        :class:`CommandResult` once it ends (output streamed to the callbacks meanwhile), or at once an
        :class:`AsyncCommandHandle` with ``background=True``. ``timeout`` is in seconds. ``user="root"``
        runs it as the sandbox's root (a container root's capabilities; default: the template's user). ``stdin``: the
        input (str or bytes), or ``True`` to keep stdin open for :meth:`AsyncCommandHandle.send_stdin`.
        With ``yield_ms`` it returns a handle after at most that long, its first :meth:`~AsyncCommandHandle.poll`
        in ``handle.first``; the command goes on."""
        p: Params = {"shell": cmd} if isinstance(cmd, str) else {"cmd": list(cmd)}
        p.update(_drop_none({"env": env, "cwd": cwd, "user": user, "timeoutMs": _ms(timeout)}))
        if stdin is True:
            p["stdin"] = "pipe"
        elif isinstance(stdin, str) and stdin != "pipe":
            p["stdin"] = stdin
        elif isinstance(stdin, (str, bytes)):
            p["stdinBase64"] = base64.b64encode(stdin.encode() if isinstance(stdin, str) else stdin).decode()
        if yield_ms is not None:
            p["yieldMs"] = yield_ms
            if max_output_bytes is not None:
                p["maxOutputBytes"] = max_output_bytes
            first = CommandPoll.from_wire(await self._sb._call("exec.run", p))
            h = AsyncCommandHandle(self._sb, first.exec_id)
            h.next_seq = first.next_seq
            h.first = first
            return h
        if background:
            p["background"] = True
            r = await self._sb._call("exec.run", p)
            return AsyncCommandHandle(self._sb, r["execId"])
        out: List[str] = []
        err: List[str] = []

        def note(method: str, n: Params) -> Any:
            if method == "exec.output":
                return _route(n, out, err, on_stdout, on_stderr)
        r = await self._sb._call("exec.run", p, on_notification=note)
        return CommandResult.from_wire(r, "".join(out), "".join(err))

    async def kill(self, exec_id: str, signal: Union[str, int] = "SIGKILL") -> None:
        await self._sb._call("exec.kill", {"execId": exec_id, "signal": signal})


class AsyncWatchHandle:
    """An ``fs.watch``; events go to the callback until :meth:`stop` (or the watch ends)."""

    def __init__(self, sandbox: "AsyncSandbox", watch_id: str, request_id: int) -> None:
        self.sandbox = sandbox
        self.watch_id = watch_id
        self._request_id = request_id

    async def stop(self) -> None:
        try:
            await self.sandbox._call("fs.unwatch", {"watchId": self.watch_id}, with_id=False)
        finally:
            self.sandbox.client.connection.stop_listening(self._request_id)


class AsyncFiles:
    """``sandbox.files``: read and write the sandbox's files (paths as the sandbox sees them)."""

    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sb = sandbox

    async def read(self, path: str, *, format: str = "text") -> Union[str, bytes]:
        """The whole file: ``str`` (UTF-8) by default, ``bytes`` with ``format="bytes"``."""
        chunks: List[bytes] = []
        offset = 0
        while True:
            r = await self._sb._call("fs.read", {"path": path, "offset": offset})
            data = base64.b64decode(r["data"])
            chunks.append(data)
            offset += len(data)
            if r["eof"] or not data:
                break
        b = b"".join(chunks)
        return b if format == "bytes" else b.decode()

    async def write(self, path: str, data: Union[str, bytes], *, mode: Optional[int] = None, append: bool = False) -> int:
        """Writes (creating parents); returns the file's size. Data of any size: past one request's worth
        it goes in chunks (a new file appears whole, at the end; an append is made piece by piece)."""
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > _UPLOAD_CHUNK:
            if not append:
                return await self._upload_chunks(path, mode, (raw[i:i + _UPLOAD_CHUNK] for i in range(0, len(raw), _UPLOAD_CHUNK)))
            size = 0
            for i in range(0, len(raw), _UPLOAD_CHUNK):
                size = await self.write(path, raw[i:i + _UPLOAD_CHUNK], mode=mode, append=True)
            return size
        p: Params = {"path": path}
        if isinstance(data, bytes):
            p["data"] = base64.b64encode(data).decode()
        else:
            p["text"] = data
        p.update(_drop_none({"mode": mode, "append": append or None}))
        return (await self._sb._call("fs.write", p))["size"]

    async def write_many(self, files: Dict[str, Union[str, bytes]]) -> int:
        """Writes several files all-or-nothing; returns the bytes written."""
        entries = [{"path": k, "data": base64.b64encode(v).decode()} if isinstance(v, bytes) else {"path": k, "text": v}
                   for k, v in files.items()]
        return (await self._sb._call("fs.writeMany", {"files": entries}))["bytes"]

    async def list(self, path: str = "/home/user", *, recursive: bool = False) -> List[EntryInfo]:
        out: List[EntryInfo] = []
        cursor = None
        while True:
            r = await self._sb._call("fs.list", _drop_none({"path": path, "recursive": recursive or None, "cursor": cursor}))
            out += [EntryInfo.from_wire(e) for e in r["entries"]]
            cursor = r.get("nextCursor")
            if not cursor:
                return out

    async def stat(self, path: str) -> EntryInfo:
        return EntryInfo.from_wire(await self._sb._call("fs.stat", {"path": path}))

    async def exists(self, path: str) -> bool:
        from .errors import NotFoundError
        try:
            await self.stat(path)
            return True
        except NotFoundError:
            return False

    async def mkdir(self, path: str, *, recursive: bool = True) -> None:
        await self._sb._call("fs.mkdir", {"path": path, "recursive": recursive})

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._sb._call("fs.remove", {"path": path, "recursive": recursive})

    async def rename(self, path: str, to: str) -> None:
        await self._sb._call("fs.rename", {"path": path, "to": to})

    async def upload(self, local_path: str, path: str, *, mode: Optional[int] = None) -> int:
        """Copies a local file into the sandbox; the file appears at ``path`` only when complete. On a
        daemon's Unix socket the daemon copies it in the kernel from this process's open descriptor;
        otherwise (a child daemon on stdio, an older daemon) it streams in chunks."""
        conn = self._sb.client.connection
        if conn.passes_fds:
            fd = os.open(local_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return (await self._sb._call("fs.upload", _drop_none({"path": path, "mode": mode, "fd": fd})))["size"]
            except InvalidParamsError as e:
                if e.data.get("field") != "fd" or not os.path.isfile(local_path):
                    raise
                conn.passes_fds = False
            finally:
                os.close(fd)
        with open(local_path, "rb") as f:
            return await self._upload_chunks(path, mode, iter(lambda: f.read(_UPLOAD_CHUNK), b""))

    async def _upload_chunks(self, path: str, mode: Optional[int], chunks: Iterable[bytes]) -> int:
        """An ``fs.upload`` session fed from ``chunks`` (at most ``_UPLOAD_CHUNK`` each); aborted on any error."""
        r = await self._sb._call("fs.upload", _drop_none({"path": path, "mode": mode}))
        uid = r["uploadId"]
        limit = r.get("maxChunkBytes", _UPLOAD_CHUNK)
        try:
            offset = 0
            for chunk in chunks:
                for i in range(0, len(chunk), limit):
                    b = chunk[i:i + limit]
                    await self._sb.client.call("fs.uploadChunk", {"uploadId": uid, "offset": offset,
                                                                  "data": base64.b64encode(b).decode()})
                    offset += len(b)
            return (await self._sb.client.call("fs.uploadCommit", {"uploadId": uid}))["size"]
        except BaseException:
            try:
                await self._sb.client.call("fs.uploadAbort", {"uploadId": uid})
            except SandpitError:
                pass
            raise

    async def download(self, path: str, local_path: str) -> int:
        """Copies a sandbox file to ``local_path`` (in the kernel into this process's descriptor on a
        daemon's Unix socket, else chunk by chunk); returns its size."""
        tmp = local_path + ".sandpit-part"
        conn = self._sb.client.connection
        if conn.passes_fds:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                size = (await self._sb._call("fs.download", {"path": path, "fd": fd}))["size"]
                os.close(fd)
                fd = -1
                os.replace(tmp, local_path)
                return size
            except InvalidParamsError as e:
                if e.data.get("field") != "fd":
                    _unlink(tmp)
                    raise
                conn.passes_fds = False
            except BaseException:
                _unlink(tmp)
                raise
            finally:
                if fd >= 0:
                    os.close(fd)
        with open(tmp, "wb") as f:
            def note(method: str, n: Params) -> None:
                if method == "fs.chunk":
                    f.seek(n["offset"])
                    f.write(base64.b64decode(n["data"]))
            r = await self._sb._call("fs.download", {"path": path}, on_notification=note)
        os.replace(tmp, local_path)
        return r["size"]

    async def watch(self, path: str, on_event: Callable[[FileEvent], Any], *, recursive: bool = False) -> AsyncWatchHandle:
        """Calls ``on_event`` for each change under the directory ``path`` until the handle is stopped."""
        def note(method: str, n: Params) -> Any:
            if method == "fs.event":
                return on_event(FileEvent.from_wire(n))
        rid, r = await self._sb.client.connection.call_listening(
            "fs.watch", {"sandboxId": self._sb.id, "path": path, "recursive": recursive}, note)
        return AsyncWatchHandle(self._sb, r["watchId"], rid)


class AsyncCheckpoints:
    """``sandbox.checkpoints``: the snapshots taken after each step."""

    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sb = sandbox

    async def list(self) -> List[Checkpoint]:
        return [Checkpoint.from_wire(c) for c in (await self._sb._call("checkpoint.list", {}))["checkpoints"]]

    async def create(self, name: Optional[str] = None) -> Checkpoint:
        return Checkpoint.from_wire(await self._sb._call("checkpoint.create", _drop_none({"name": name})))


class AsyncSandbox:
    """An isolated sandbox. ``async with await AsyncSandbox.create() as sb:`` deletes it at the end."""

    def __init__(self, client: AsyncClient, info: Params, *, owns_client: bool = False) -> None:
        self.client = client
        self.info = info
        self.id: str = info["sandboxId"]
        self._owns_client = owns_client
        self.commands = AsyncCommands(self)
        self.pty = AsyncPty(self)
        self.files = AsyncFiles(self)
        self.checkpoints = AsyncCheckpoints(self)

    @classmethod
    async def create(cls, template: str = "default", *, policy: str = "default", limits: Optional[Params] = None,
                     metadata: Optional[Dict[str, str]] = None, idle: Optional[Params] = None,
                     client: Optional[AsyncClient] = None, socket: Optional[str] = None, **connect: Any) -> "AsyncSandbox":
        """Creates a sandbox from ``template`` under ``policy`` (narrowed by ``limits``). Without
        ``client`` it opens its own connection (``socket``, ``SANDPIT_SOCKET``, or a child daemon) and
        closes it when the sandbox is deleted."""
        own = client is None
        c = client or await AsyncClient.connect(socket, **connect)
        try:
            info = await c.call("sandbox.create", _drop_none({"template": template, "policy": policy, "limits": limits,
                                                              "metadata": metadata, "idle": idle}))
        except BaseException:
            if own:
                await c.close()
            raise
        return cls(c, info, owns_client=own)

    @classmethod
    async def connect(cls, sandbox_id: str, *, client: Optional[AsyncClient] = None, socket: Optional[str] = None) -> "AsyncSandbox":
        """A handle on an existing sandbox (by id)."""
        own = client is None
        c = client or await AsyncClient.connect(socket)
        return cls(c, await c.call("sandbox.get", {"sandboxId": sandbox_id}), owns_client=own)

    async def _call(self, method: str, params: Params, *, with_id: bool = True, **kw: Any) -> Any:
        p = {"sandboxId": self.id, **params} if with_id else params
        return await self.client.call(method, p, **kw)

    @property
    def state(self) -> str:
        return self.info.get("state", "")

    async def refresh(self) -> Params:
        self.info = await self._call("sandbox.get", {})
        return self.info

    async def run_code(self, code: str, *, context: Optional[str] = None, on_stdout: Optional[OutputCallback] = None,
                       on_stderr: Optional[OutputCallback] = None, on_result: Optional[ResultCallback] = None,
                       on_error: Optional[ResultCallback] = None, timeout: Optional[float] = None) -> Execution:
        """Runs a cell in an interpreter context (default: the sandbox's Python context): state persists
        between cells. Output is streamed to the callbacks as it is printed; ``on_result`` gets each
        :class:`Result`, ``on_error`` the :class:`ExecutionError` if the cell raised."""
        logs = Logs()

        def note(method: str, n: Params) -> Any:
            if method == "code.output":
                return _route(n, logs.stdout, logs.stderr, on_stdout, on_stderr)
        r = await self._call("code.run", _drop_none({"code": code, "contextId": context, "timeoutMs": _ms(timeout)}),
                             on_notification=note)
        ex = Execution.from_wire(r, logs)
        for res in ex.results:
            if on_result:
                on_result(res)
        if ex.error and on_error:
            on_error(ex.error)
        return ex

    async def create_context(self, language: str = "python") -> str:
        """A new interpreter context (``python`` or ``bash``); pass its id as ``run_code(context=...)``."""
        return (await self._call("context.create", {"language": language}))["contextId"]

    async def interrupt(self, context: Optional[str] = None) -> None:
        await self._call("code.interrupt", _drop_none({"contextId": context}))

    async def restore(self, step: Optional[int] = None, *, checkpoint_id: Optional[str] = None) -> RestoreResult:
        """Rolls the sandbox's files back to a step (or checkpoint). What came back and what did not
        (processes, interpreter state) is in the result."""
        r = await self._call("sandbox.restore", _drop_none({"step": step, "checkpointId": checkpoint_id}))
        self.info = {k: v for k, v in r.items() if k not in ("restored", "lost", "contexts", "checkpoint")}
        return RestoreResult.from_wire(r)

    async def fork(self, count: int = 1, *, step: Optional[int] = None, checkpoint_id: Optional[str] = None,
                   idle: Optional[Params] = None, metadata: Optional[Dict[str, str]] = None) -> List["AsyncSandbox"]:
        """New sandboxes starting from a step's files (default: the latest), on the same connection; ``idle``
        narrows their idle rules (``{"deleteAfterMs": ...}``), ``metadata`` adds to the source's."""
        r = await self._call("sandbox.fork", _drop_none({"count": count, "step": step, "checkpointId": checkpoint_id,
                                                         "idle": idle, "metadata": metadata}))
        return [AsyncSandbox(self.client, s) for s in r["sandboxes"]]

    async def pause(self) -> Params:
        self.info = await self._call("sandbox.pause", {})
        return self.info

    async def resume(self) -> Params:
        self.info = await self._call("sandbox.resume", {})
        return self.info

    async def hibernate(self) -> Params:
        self.info = await self._call("sandbox.hibernate", {})
        return self.info

    async def keepalive(self, for_seconds: Optional[float] = None, *, while_connected: bool = False) -> Params:
        """Holds the sandbox awake (e.g. while the agent waits on an LLM)."""
        return await self._call("sandbox.keepalive", _drop_none({"forMs": _ms(for_seconds), "whileConnected": while_connected or None}))

    async def delete(self) -> None:
        """Deletes the sandbox (kills its processes, removes its files); closes its own connection."""
        try:
            await self._call("sandbox.delete", {})
        finally:
            if self._owns_client:
                await self.client.close()

    kill = delete

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.delete()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
