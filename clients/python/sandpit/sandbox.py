"""The synchronous API: the same objects as the asyncio API (``_async``), each call run on a shared
background event loop. One :class:`Client` may be used from many threads at once, with many requests
in flight on its one connection. Callbacks (``on_stdout``...) run on the loop's thread."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ._async import (AsyncCheckpoints, AsyncClient, AsyncCommandHandle, AsyncCommands, AsyncFiles, AsyncPty, AsyncPtyHandle, AsyncSandbox,
                     AsyncWatchHandle, OutputCallback, Params, ResultCallback)
from ._connection import LoopThread
from .models import Checkpoint, CommandPoll, CommandResult, EntryInfo, Execution, FileEvent, RestoreResult


class Client:
    """A connection to a Sandpit daemon (see :class:`AsyncClient`), usable from any thread."""

    def __init__(self, socket: Optional[str] = None, *, sandpit: Optional[str] = None, serve_args: Sequence[str] = (),
                 _async: Optional[AsyncClient] = None) -> None:
        self._loop = LoopThread.shared()
        self.aio = _async or self._loop.run(AsyncClient.connect(socket, sandpit=sandpit, serve_args=serve_args))

    def call(self, method: str, params: Optional[Params] = None, **kw: Any) -> Any:
        return self._loop.run(self.aio.call(method, params, **kw))

    def info(self) -> Params:
        return self._loop.run(self.aio.info())

    def list_sandboxes(self, *, state: Optional[str] = None, metadata: Optional[Dict[str, str]] = None) -> List[Params]:
        return self._loop.run(self.aio.list_sandboxes(state=state, metadata=metadata))

    def batch(self, tasks: List[Params], **kw: Any) -> Params:
        """See :meth:`AsyncClient.batch`."""
        return self._loop.run(self.aio.batch(tasks, **kw))

    def close(self) -> None:
        self._loop.run(self.aio.close())

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CommandHandle:
    """A command started with ``background=True``."""

    def __init__(self, loop: LoopThread, handle: AsyncCommandHandle) -> None:
        self._loop = loop
        self.aio = handle
        self.exec_id = handle.exec_id

    def wait(self, *, on_stdout: Optional[OutputCallback] = None, on_stderr: Optional[OutputCallback] = None) -> CommandResult:
        return self._loop.run(self.aio.wait(on_stdout=on_stdout, on_stderr=on_stderr))

    def kill(self, signal: Union[str, int] = "SIGKILL") -> None:
        self._loop.run(self.aio.kill(signal))

    def send_stdin(self, data: Union[str, bytes]) -> None:
        """See :meth:`AsyncCommandHandle.send_stdin`."""
        self._loop.run(self.aio.send_stdin(data))

    def close_stdin(self) -> None:
        self._loop.run(self.aio.close_stdin())

    def poll(self, yield_ms: int = 1000, *, max_output_bytes: Optional[int] = None) -> CommandPoll:
        """See :meth:`AsyncCommandHandle.poll`."""
        return self._loop.run(self.aio.poll(yield_ms, max_output_bytes=max_output_bytes))

    @property
    def first(self) -> Optional[CommandPoll]:
        return self.aio.first


class PtyHandle:
    """A command on a terminal (:meth:`Pty.create`)."""

    def __init__(self, loop: LoopThread, handle: AsyncPtyHandle) -> None:
        self._loop = loop
        self.aio = handle
        self.exec_id = handle.exec_id

    def send_input(self, data: Union[str, bytes]) -> None:
        self._loop.run(self.aio.send_input(data))

    def resize(self, rows: int, cols: int) -> None:
        self._loop.run(self.aio.resize(rows, cols))

    def kill(self, signal: Union[str, int] = "SIGKILL") -> None:
        self._loop.run(self.aio.kill(signal))

    def wait(self, timeout: Optional[float] = None) -> CommandResult:
        return self._loop.run(self.aio.wait(), timeout)


class Pty:
    """``sandbox.pty``: commands on a pseudo-terminal (``on_data`` runs on the client's loop thread)."""

    def __init__(self, loop: LoopThread, pty: AsyncPty) -> None:
        self._loop = loop
        self.aio = pty

    def create(self, rows: int = 24, cols: int = 80, on_data: Optional[Callable[[bytes], Any]] = None, **kw: Any) -> PtyHandle:
        """See :meth:`AsyncPty.create` (``cmd``, ``env``, ``cwd``, ``timeout``)."""
        return PtyHandle(self._loop, self._loop.run(self.aio.create(rows, cols, on_data, **kw)))


class Commands:
    """``sandbox.commands``: run programs in the sandbox."""

    def __init__(self, loop: LoopThread, commands: AsyncCommands) -> None:
        self._loop = loop
        self.aio = commands

    def run(self, cmd: Union[str, Sequence[str]], *, background: bool = False, **kw: Any) -> Union[CommandResult, CommandHandle]:
        """See :meth:`AsyncCommands.run` (``env``, ``cwd``, ``stdin``, ``timeout`` in seconds,
        ``on_stdout``, ``on_stderr``)."""
        r = self._loop.run(self.aio.run(cmd, background=background, **kw))   # a handle with background or yield_ms
        return CommandHandle(self._loop, r) if isinstance(r, AsyncCommandHandle) else r

    def kill(self, exec_id: str, signal: Union[str, int] = "SIGKILL") -> None:
        self._loop.run(self.aio.kill(exec_id, signal))


class WatchHandle:
    def __init__(self, loop: LoopThread, handle: AsyncWatchHandle) -> None:
        self._loop = loop
        self.aio = handle
        self.watch_id = handle.watch_id

    def stop(self) -> None:
        self._loop.run(self.aio.stop())


class Files:
    """``sandbox.files``: read and write the sandbox's files."""

    def __init__(self, loop: LoopThread, files: AsyncFiles) -> None:
        self._loop = loop
        self.aio = files

    def read(self, path: str, *, format: str = "text") -> Union[str, bytes]:
        return self._loop.run(self.aio.read(path, format=format))

    def write(self, path: str, data: Union[str, bytes], *, mode: Optional[int] = None, append: bool = False) -> int:
        return self._loop.run(self.aio.write(path, data, mode=mode, append=append))

    def write_many(self, files: Dict[str, Union[str, bytes]]) -> int:
        return self._loop.run(self.aio.write_many(files))

    def list(self, path: str = "/home/user", *, recursive: bool = False) -> List[EntryInfo]:
        return self._loop.run(self.aio.list(path, recursive=recursive))

    def stat(self, path: str) -> EntryInfo:
        return self._loop.run(self.aio.stat(path))

    def exists(self, path: str) -> bool:
        return self._loop.run(self.aio.exists(path))

    def mkdir(self, path: str, *, recursive: bool = True) -> None:
        self._loop.run(self.aio.mkdir(path, recursive=recursive))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._loop.run(self.aio.remove(path, recursive=recursive))

    def rename(self, path: str, to: str) -> None:
        self._loop.run(self.aio.rename(path, to))

    def upload(self, local_path: str, path: str, *, mode: Optional[int] = None) -> int:
        return self._loop.run(self.aio.upload(local_path, path, mode=mode))

    def download(self, path: str, local_path: str) -> int:
        return self._loop.run(self.aio.download(path, local_path))

    def watch(self, path: str, on_event: Callable[[FileEvent], Any], *, recursive: bool = False) -> WatchHandle:
        return WatchHandle(self._loop, self._loop.run(self.aio.watch(path, on_event, recursive=recursive)))


class Checkpoints:
    """``sandbox.checkpoints``: the snapshots taken after each step."""

    def __init__(self, loop: LoopThread, checkpoints: AsyncCheckpoints) -> None:
        self._loop = loop
        self.aio = checkpoints

    def list(self) -> List[Checkpoint]:
        return self._loop.run(self.aio.list())

    def create(self, name: Optional[str] = None) -> Checkpoint:
        return self._loop.run(self.aio.create(name))


class Sandbox:
    """An isolated sandbox. ``with Sandbox.create() as sb:`` deletes it at the end.

    >>> with Sandbox.create() as sb:
    ...     sb.run_code("x = 21")
    ...     print(sb.run_code("x * 2").text)
    42
    """

    def __init__(self, loop: LoopThread, sandbox: AsyncSandbox) -> None:
        self._loop = loop
        self.aio = sandbox
        self.id = sandbox.id
        self.commands = Commands(loop, sandbox.commands)
        self.pty = Pty(loop, sandbox.pty)
        self.files = Files(loop, sandbox.files)
        self.checkpoints = Checkpoints(loop, sandbox.checkpoints)

    @classmethod
    def create(cls, template: str = "default", *, client: Optional[Client] = None, **kw: Any) -> "Sandbox":
        """See :meth:`AsyncSandbox.create` (``policy``, ``limits``, ``metadata``, ``idle``, ``socket``)."""
        loop = LoopThread.shared()
        return cls(loop, loop.run(AsyncSandbox.create(template, client=client.aio if client else None, **kw)))

    @classmethod
    def connect(cls, sandbox_id: str, *, client: Optional[Client] = None, socket: Optional[str] = None) -> "Sandbox":
        loop = LoopThread.shared()
        return cls(loop, loop.run(AsyncSandbox.connect(sandbox_id, client=client.aio if client else None, socket=socket)))

    @property
    def info(self) -> Params:
        return self.aio.info

    @property
    def state(self) -> str:
        return self.aio.state

    def refresh(self) -> Params:
        return self._loop.run(self.aio.refresh())

    def run_code(self, code: str, *, context: Optional[str] = None, on_stdout: Optional[OutputCallback] = None,
                 on_stderr: Optional[OutputCallback] = None, on_result: Optional[ResultCallback] = None,
                 on_error: Optional[ResultCallback] = None, timeout: Optional[float] = None) -> Execution:
        """See :meth:`AsyncSandbox.run_code`."""
        return self._loop.run(self.aio.run_code(code, context=context, on_stdout=on_stdout, on_stderr=on_stderr,
                                                on_result=on_result, on_error=on_error, timeout=timeout))

    def create_context(self, language: str = "python") -> str:
        return self._loop.run(self.aio.create_context(language))

    def interrupt(self, context: Optional[str] = None) -> None:
        self._loop.run(self.aio.interrupt(context))

    def restore(self, step: Optional[int] = None, *, checkpoint_id: Optional[str] = None) -> RestoreResult:
        return self._loop.run(self.aio.restore(step, checkpoint_id=checkpoint_id))

    def fork(self, count: int = 1, *, step: Optional[int] = None, checkpoint_id: Optional[str] = None,
             idle: Optional[Params] = None, metadata: Optional[Dict[str, str]] = None) -> List["Sandbox"]:
        return [Sandbox(self._loop, s) for s in self._loop.run(self.aio.fork(count, step=step, checkpoint_id=checkpoint_id,
                                                                              idle=idle, metadata=metadata))]

    def pause(self) -> Params:
        return self._loop.run(self.aio.pause())

    def resume(self) -> Params:
        return self._loop.run(self.aio.resume())

    def hibernate(self) -> Params:
        return self._loop.run(self.aio.hibernate())

    def keepalive(self, for_seconds: Optional[float] = None, *, while_connected: bool = False) -> Params:
        return self._loop.run(self.aio.keepalive(for_seconds, while_connected=while_connected))

    def delete(self) -> None:
        self._loop.run(self.aio.delete())

    kill = delete

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.delete()
