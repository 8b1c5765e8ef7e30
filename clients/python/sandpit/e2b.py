"""E2B-shaped API over Sandpit: code written for ``e2b_code_interpreter`` runs after one import changes.

::

    from sandpit.e2b import Sandbox        # was: from e2b_code_interpreter import Sandbox

    with Sandbox.create() as sbx:
        sbx.run_code("x = 41")
        print(sbx.run_code("x + 1").text)                  # 42
        print(sbx.commands.run("echo hi").stdout)          # hi
        sbx.files.write("/home/user/a.txt", "hello")

The objects and their fields are E2B's (``Execution``, ``Result`` with base64 ``png``, ``Logs``,
``OutputMessage``, ``CommandResult``, ``EntryInfo``, ``WriteInfo``, ``SandboxInfo``), and so are the
defaults that change behaviour: ``commands.run`` runs ``bash -l -c``, gives up after 60 s with
:class:`TimeoutException` and raises :class:`CommandExitException` on a non-zero exit; cells give up
after 300 s. Where Sandpit does more there are extra methods (``checkpoints``, ``restore``, ``fork``
with interpreter state). What cannot be mirrored raises :class:`NotImplementedError` naming it, never a
silent difference; the differences that remain are in the client README ("Coming from E2B").

The sandbox talks to the daemon on ``SANDPIT_SOCKET`` (or starts one as a child): no account, no API key
(``api_key=`` and the like are accepted and ignored).
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import inspect
import os
import stat as _stat
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Union

from . import _async as _sp
from ._connection import LoopThread
from .errors import NotFoundError, SandpitError, SandpitTimeoutError
from .models import Execution as _SpExecution

DEFAULT_COMMAND_TIMEOUT = 60.0
DEFAULT_CELL_TIMEOUT = 300.0
DEFAULT_SANDBOX_TIMEOUT = 300
# E2B's template names that mean "the default code interpreter": Sandpit's default template.
_DEFAULT_TEMPLATES = {None, "", "base", "code-interpreter-v1", "code-interpreter"}
_HOME = "/home/user"


# --- errors, as E2B names them --------------------------------------------------------------------

class SandboxException(Exception):
    """Base class of the errors this API raises (E2B's ``SandboxException``)."""


class TimeoutException(SandboxException):
    """A command, a cell or a request took longer than its timeout."""


class InvalidArgumentException(SandboxException):
    pass


class NotFoundException(SandboxException):
    pass


class FileNotFoundException(NotFoundException):
    pass


class SandboxNotFoundException(NotFoundException):
    pass


class NotEnoughSpaceException(SandboxException):
    pass


# --- models ---------------------------------------------------------------------------------------

@dataclass
class CommandResult:
    """What a finished command printed and how it ended."""

    stderr: str
    stdout: str
    exit_code: int
    error: Optional[str] = None


class CommandExitException(SandboxException, CommandResult):
    """``commands.run`` (or ``CommandHandle.wait``) of a command that exited non-zero."""

    def __init__(self, stderr: str, stdout: str, exit_code: int, error: Optional[str] = None) -> None:
        CommandResult.__init__(self, stderr=stderr, stdout=stdout, exit_code=exit_code, error=error)
        SandboxException.__init__(self, f"Command exited with code {exit_code} and error:\n{stderr}")

    def __str__(self) -> str:
        return f"Command exited with code {self.exit_code} and error:\n{self.stderr}"


@dataclass
class OutputMessage:
    """One chunk of a cell's stdout or stderr, for ``on_stdout``/``on_stderr`` of ``run_code``."""

    line: str
    timestamp: int
    error: bool = False

    def __str__(self) -> str:
        return self.line


@dataclass
class ExecutionError:
    name: str
    value: str
    traceback: str


@dataclass(repr=False)
class Result:
    """One rich result of a cell, E2B's way: ``png``/``jpeg`` are base64 strings, ``text`` is the
    ``repr``, ``is_main_result`` is true for the value of the cell's last expression."""

    text: Optional[str] = None
    html: Optional[str] = None
    markdown: Optional[str] = None
    svg: Optional[str] = None
    png: Optional[str] = None
    jpeg: Optional[str] = None
    pdf: Optional[str] = None
    latex: Optional[str] = None
    json: Optional[dict] = None
    javascript: Optional[str] = None
    data: Optional[dict] = None
    chart: Optional[Any] = None
    is_main_result: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict)

    _FIELDS = {"text/plain": "text", "text/html": "html", "text/markdown": "markdown", "image/svg+xml": "svg",
               "image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf", "text/latex": "latex",
               "application/json": "json", "application/javascript": "javascript"}
    _FORMATS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript", "data", "chart")

    @classmethod
    def from_bundle(cls, bundle: Dict[str, Any], is_main_result: bool) -> "Result":
        """From a Sandpit result (a MIME bundle): each known type in its E2B field, the rest in ``extra``."""
        known = {cls._FIELDS[m]: v for m, v in bundle.items() if m in cls._FIELDS}
        return cls(**known, is_main_result=is_main_result, extra={m: v for m, v in bundle.items() if m not in cls._FIELDS}, raw=bundle)

    def __getitem__(self, item: str) -> Any:
        return getattr(self, item)

    def formats(self) -> List[str]:
        return [n for n in self._FORMATS if getattr(self, n)] + list(self.extra)

    def __str__(self) -> str:
        return self.text or ""

    def __repr__(self) -> str:
        return f"Result({self.text})" if self.text else f"Result(Formats: {', '.join(self.formats())})"

    def _repr_html_(self) -> Optional[str]:
        return self.html

    def _repr_png_(self) -> Optional[str]:
        return self.png


@dataclass
class Logs:
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


@dataclass
class Execution:
    """A cell's outcome: its results, what it printed, and the error it raised (if any)."""

    results: List[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: Optional[ExecutionError] = None
    execution_count: Optional[int] = None
    #: Sandpit's: the step this cell was, and its checkpoint (for ``restore``).
    step: Optional[int] = None

    @property
    def text(self) -> Optional[str]:
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None


@dataclass
class Context:
    context_id: str
    language: str
    cwd: str

    @property
    def id(self) -> str:
        return self.context_id


class FileType(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass
class WriteInfo:
    name: str
    type: Optional[FileType]
    path: str


@dataclass
class EntryInfo(WriteInfo):
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_time: Optional[_dt.datetime] = None
    symlink_target: Optional[str] = None


class FilesystemEventType(Enum):
    CHMOD = "chmod"
    CREATE = "create"
    REMOVE = "remove"
    RENAME = "rename"
    WRITE = "write"


@dataclass
class FilesystemEvent:
    name: str
    type: FilesystemEventType


@dataclass
class ProcessInfo:
    pid: str
    tag: Optional[str]
    cmd: str
    args: List[str]
    envs: Dict[str, str]
    cwd: Optional[str]


@dataclass
class SandboxInfo:
    sandbox_id: str
    template_id: str
    name: Optional[str]
    metadata: Dict[str, str]
    started_at: _dt.datetime
    end_at: Optional[_dt.datetime]
    state: str
    cpu_count: Optional[float] = None
    memory_mb: Optional[int] = None


@dataclass
class SandboxQuery:
    metadata: Optional[Dict[str, str]] = None
    state: Optional[List[str]] = None


def _unsupported(what: str, why: str) -> NotImplementedError:
    return NotImplementedError(f"sandpit.e2b: {what} is not supported: {why}")


def _ts(text: Optional[str]) -> Optional[_dt.datetime]:
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _entry(e: Dict[str, Any]) -> EntryInfo:
    kind = {"dir": FileType.DIR, "file": FileType.FILE, "symlink": FileType.SYMLINK, "link": FileType.SYMLINK}.get(e.get("type", ""))
    mode = e.get("mode", 0)
    owners = {0: "root", 1000: "user"}
    return EntryInfo(name=e.get("name", ""), type=kind, path=e.get("path", ""), size=e.get("size", 0), mode=mode,
                     permissions=_stat.filemode(mode)[1:] if mode else "",
                     owner=owners.get(e.get("uid", -1), str(e.get("uid", ""))), group=owners.get(e.get("gid", -1), str(e.get("gid", ""))),
                     modified_time=_ts(e.get("mtime")), symlink_target=e.get("target"))


def _info(i: Dict[str, Any]) -> SandboxInfo:
    limits = i.get("limits") or {}
    return SandboxInfo(sandbox_id=i["sandboxId"], template_id=i.get("template", ""), name=(i.get("metadata") or {}).get("name"),
                       metadata=dict(i.get("metadata") or {}), started_at=_ts(i.get("createdAt")) or _dt.datetime.now(_dt.timezone.utc),
                       end_at=None, state=i.get("state", ""),
                       cpu_count=(limits.get("cpuMillicores") or 0) / 1000 or None,
                       memory_mb=(limits.get("memoryBytes") or 0) >> 20 or None)


async def _call(fn: Optional[Callable[[Any], Any]], arg: Any) -> None:
    if fn is not None:
        r = fn(arg)
        if inspect.isawaitable(r):
            await r


def _mapped(e: SandpitError) -> Exception:
    """A Sandpit error as the E2B exception a caller would catch."""
    if isinstance(e, SandpitTimeoutError):
        return TimeoutException(str(e))
    if isinstance(e, NotFoundError):
        return FileNotFoundException(str(e)) if e.data.get("path") or "no such file" in str(e) else SandboxNotFoundException(str(e))
    if e.code == "limit_exceeded" and "disk" in str(e):
        return NotEnoughSpaceException(str(e))
    if e.code == "invalid_params":
        return InvalidArgumentException(str(e))
    return SandboxException(f"{e} [{e.code}]")


class _Errors:
    """``async with _Errors():`` turns Sandpit errors into E2B's."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, err: Any, tb: Any) -> bool:
        if isinstance(err, SandpitError):
            raise _mapped(err) from err
        return False


class _either:
    """A method callable on an instance (``sbx.kill()``) or on the class with an id
    (``Sandbox.kill(sandbox_id)``), as E2B's are."""

    def __init__(self, on_class: Callable[..., Any], on_instance: Callable[..., Any]) -> None:
        self._cls, self._inst = on_class, on_instance

    def __get__(self, obj: Any, owner: Any) -> Callable[..., Any]:
        return functools.partial(self._cls, owner) if obj is None else functools.partial(self._inst, obj)


# --- asyncio API ----------------------------------------------------------------------------------

class AsyncCommandHandle:
    """A command started with ``background=True``."""

    def __init__(self, sandbox: "AsyncSandbox", handle: _sp.AsyncCommandHandle,
                 on_stdout: Optional[Callable[[str], Any]], on_stderr: Optional[Callable[[str], Any]]) -> None:
        self._sb = sandbox
        self._h = handle
        self._on_stdout, self._on_stderr = on_stdout, on_stderr

    @property
    def pid(self) -> str:
        """The command's id (Sandpit's exec id, where E2B has a process id)."""
        return self._h.exec_id

    async def wait(self, on_pty: Any = None, on_stdout: Optional[Callable[[str], Any]] = None,
                   on_stderr: Optional[Callable[[str], Any]] = None) -> CommandResult:
        async with _Errors():
            r = await self._h.wait(on_stdout=on_stdout or self._on_stdout, on_stderr=on_stderr or self._on_stderr)
        return _finished(r)

    async def kill(self) -> bool:
        try:
            await self._h.kill()
            return True
        except SandpitError:
            return False

    async def send_stdin(self, data: Union[str, bytes], request_timeout: Optional[float] = None) -> None:
        async with _Errors():
            await self._h.send_stdin(data)

    async def close_stdin(self, request_timeout: Optional[float] = None) -> None:
        async with _Errors():
            await self._h.close_stdin()

    async def disconnect(self) -> None:
        """Stops following the command; it goes on (``commands.connect`` follows it again)."""


def _finished(r: Any) -> CommandResult:
    if r.timed_out:
        raise TimeoutException(f"command {r.exec_id} timed out (its process tree was killed)")
    code = r.exit_code if r.exit_code is not None else -1
    error = None if code == 0 else (f"signal: {r.signal}" if r.signal else f"exit status {code}")
    if code != 0:
        raise CommandExitException(stderr=r.stderr, stdout=r.stdout, exit_code=code, error=error)
    return CommandResult(stderr=r.stderr, stdout=r.stdout, exit_code=0, error=None)


class AsyncCommands:
    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sb = sandbox

    async def run(self, cmd: str, background: bool = False, envs: Optional[Dict[str, str]] = None, user: Optional[str] = None,
                  cwd: Optional[str] = None, on_stdout: Optional[Callable[[str], Any]] = None,
                  on_stderr: Optional[Callable[[str], Any]] = None, stdin: Optional[bool] = None,
                  timeout: Optional[float] = DEFAULT_COMMAND_TIMEOUT, request_timeout: Optional[float] = None,
                  **_: Any) -> Union[CommandResult, AsyncCommandHandle]:
        """Runs ``cmd`` with ``bash -l -c``. Without ``background`` it returns once the command ends;
        a non-zero exit raises :class:`CommandExitException`, a timeout (default 60 s; 0 = none)
        :class:`TimeoutException`."""
        if user not in (None, "user", "root"):
            raise _unsupported(f"commands.run(user={user!r})", "commands run as the sandbox's \"user\" or as \"root\"")
        env = {**self._sb._envs, **(envs or {})} or None
        t = None if not timeout else timeout
        async with _Errors():
            r = await self._sb._sp.commands.run(["/bin/bash", "-l", "-c", cmd], background=background, env=env, cwd=cwd, user=user,
                                                stdin=True if stdin else None, timeout=t,
                                                on_stdout=None if background else on_stdout,
                                                on_stderr=None if background else on_stderr)
        if background:
            return AsyncCommandHandle(self._sb, r, on_stdout, on_stderr)
        return _finished(r)

    async def kill(self, pid: str, request_timeout: Optional[float] = None) -> bool:
        try:
            await self._sb._sp.commands.kill(pid)
            return True
        except SandpitError:
            return False

    async def list(self, request_timeout: Optional[float] = None) -> List[ProcessInfo]:
        async with _Errors():
            r = await self._sb._sp._call("exec.list", {})
        out = []
        for x in r.get("execs", []):
            if x.get("state") == "running":
                argv = x.get("command") or []
                if isinstance(argv, str):
                    argv = [argv]
                out.append(ProcessInfo(pid=x["execId"], tag=None, cmd=argv[0] if argv else "", args=list(argv[1:]), envs={}, cwd=None))
        return out

    async def send_stdin(self, pid: str, data: Union[str, bytes], request_timeout: Optional[float] = None) -> None:
        async with _Errors():
            await _sp.AsyncCommandHandle(self._sb._sp, pid).send_stdin(data)

    async def close_stdin(self, pid: str, request_timeout: Optional[float] = None) -> None:
        async with _Errors():
            await _sp.AsyncCommandHandle(self._sb._sp, pid).close_stdin()

    async def connect(self, pid: str, timeout: Optional[float] = None, request_timeout: Optional[float] = None,
                      retain_output: bool = True, on_stdout: Optional[Callable[[str], Any]] = None,
                      on_stderr: Optional[Callable[[str], Any]] = None) -> AsyncCommandHandle:
        return AsyncCommandHandle(self._sb, _sp.AsyncCommandHandle(self._sb._sp, pid), on_stdout, on_stderr)


class AsyncWatchHandle:
    def __init__(self) -> None:
        self._events: List[FilesystemEvent] = []
        self._handle: Optional[_sp.AsyncWatchHandle] = None

    async def get_new_events(self) -> List[FilesystemEvent]:
        out, self._events = self._events, []
        return out

    async def stop(self) -> None:
        if self._handle is not None:
            await self._handle.stop()


class AsyncFilesystem:
    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sb = sandbox

    @property
    def _f(self) -> _sp.AsyncFiles:
        return self._sb._sp.files

    async def read(self, path: str, format: str = "text", user: Optional[str] = None, request_timeout: Optional[float] = None,
                   **_: Any) -> Any:
        """``format``: ``"text"`` (str), ``"bytes"`` (bytearray) or ``"stream"`` (an iterator of bytes)."""
        if format not in ("text", "bytes", "stream"):
            raise InvalidArgumentException(f"format must be text, bytes or stream, not {format!r}")
        async with _Errors():
            data = await self._f.read(path, format="text" if format == "text" else "bytes")
        if format == "bytes":
            return bytearray(data)
        if format == "stream":
            return iter([bytes(data)])
        return data

    async def write(self, path: Any, data: Any = None, user: Optional[str] = None, request_timeout: Optional[float] = None,
                    **_: Any) -> Any:
        """Writes one file (``str``, ``bytes`` or a file object) and returns its :class:`WriteInfo`; given a
        list of ``{"path", "data"}`` entries (E2B's older form) it writes them all."""
        if isinstance(path, list):
            return await self.write_files(path)
        if hasattr(data, "read"):
            data = data.read()
        async with _Errors():
            await self._f.write(path, data)
        return WriteInfo(name=path.rsplit("/", 1)[-1], type=FileType.FILE, path=path)

    async def write_files(self, files: List[Any], user: Optional[str] = None, request_timeout: Optional[float] = None,
                          **_: Any) -> List[WriteInfo]:
        entries = {}
        for f in files:
            p, d = (f["path"], f["data"]) if isinstance(f, dict) else (f.path, f.data)
            entries[p] = d.read() if hasattr(d, "read") else d
        async with _Errors():
            if sum(len(d) for d in entries.values()) <= _sp._UPLOAD_CHUNK:
                await self._f.write_many(entries)
            else:   # too much for one request: file by file (each still appears whole)
                for p, d in entries.items():
                    await self._f.write(p, d)
        return [WriteInfo(name=p.rsplit("/", 1)[-1], type=FileType.FILE, path=p) for p in entries]

    async def list(self, path: str, depth: Optional[int] = 1, user: Optional[str] = None,
                   request_timeout: Optional[float] = None) -> List[EntryInfo]:
        """Entries under ``path`` down to ``depth`` levels (1: its children)."""
        if depth is not None and depth < 1:
            raise InvalidArgumentException("depth should be at least one")
        async with _Errors():
            entries = await self._f.list(path, recursive=depth != 1)
        base = path.rstrip("/") + "/"
        out = []
        for e in entries:
            rel = e.path[len(base):] if e.path.startswith(base) else e.name
            if depth is None or rel.count("/") < depth:
                out.append(_entry(e.raw))
        return out

    async def exists(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> bool:
        async with _Errors():
            return await self._f.exists(path)

    async def get_info(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> EntryInfo:
        async with _Errors():
            return _entry((await self._f.stat(path)).raw)

    async def remove(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> None:
        async with _Errors():
            await self._f.remove(path, recursive=True)

    async def rename(self, old_path: str, new_path: str, user: Optional[str] = None,
                     request_timeout: Optional[float] = None) -> EntryInfo:
        async with _Errors():
            await self._f.rename(old_path, new_path)
            return _entry((await self._f.stat(new_path)).raw)

    async def make_dir(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> bool:
        """Creates ``path`` and its parents; False when it already existed."""
        async with _Errors():
            if await self._f.exists(path):
                return False
            await self._f.mkdir(path, recursive=True)
        return True

    async def watch_dir(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None,
                        recursive: bool = False, **_: Any) -> AsyncWatchHandle:
        """Events under ``path`` from now on, collected for :meth:`AsyncWatchHandle.get_new_events`."""
        w = AsyncWatchHandle()
        base = path.rstrip("/") + "/"

        def note(ev: Any) -> None:
            kind = {"created": FilesystemEventType.CREATE, "modified": FilesystemEventType.WRITE, "deleted": FilesystemEventType.REMOVE,
                    "renamed": FilesystemEventType.RENAME}.get(ev.type)
            if kind is None:   # overflow, ended: nothing E2B would report
                return
            w._events.append(FilesystemEvent(name=ev.path[len(base):] if ev.path.startswith(base) else ev.path, type=kind))
        async with _Errors():
            w._handle = await self._f.watch(path, note, recursive=recursive)
        return w


class AsyncSandbox:
    """An E2B-shaped sandbox (asyncio): ``sbx = await AsyncSandbox.create()``."""

    def __init__(self, sandbox: _sp.AsyncSandbox, envs: Optional[Dict[str, str]] = None) -> None:
        self._sp = sandbox
        self._envs: Dict[str, str] = dict(envs or {})
        self._contexts: Dict[str, str] = {}      # language -> the default context of that language
        self._hosts: Dict[int, str] = {}
        self.commands = AsyncCommands(self)
        self.files = AsyncFilesystem(self)

    @property
    def sandbox_id(self) -> str:
        return self._sp.id

    @classmethod
    async def create(cls, template: Optional[str] = None, timeout: Optional[int] = None, metadata: Optional[Dict[str, str]] = None,
                     envs: Optional[Dict[str, str]] = None, secure: bool = True, allow_internet_access: bool = True,
                     **opts: Any) -> "AsyncSandbox":
        """A new sandbox from ``template``. E2B's default (code-interpreter) template is
        ``$SANDPIT_E2B_TEMPLATE``, else Sandpit's ``default``: the host's Python, without E2B's
        preinstalled numpy/pandas/matplotlib (``Fixtures/templates/sci`` builds a template with them). ``timeout`` (seconds, default 300): the sandbox is deleted after it has been idle
        that long (E2B: that long after creation, busy or not). ``envs`` go to every command and cell.
        ``allow_internet_access`` is the policy's network: Sandpit sandboxes have none unless a policy
        allows it (``policy="pypi"``)."""
        name = os.environ.get("SANDPIT_E2B_TEMPLATE", "default") if template in _DEFAULT_TEMPLATES else template
        t = DEFAULT_SANDBOX_TIMEOUT if timeout is None else timeout
        async with _Errors():
            sb = await _sp.AsyncSandbox.create(name, policy=opts.get("policy", "default"), limits=opts.get("limits"),
                                               metadata=metadata, idle={"deleteAfterMs": int(t * 1000)} if t else None,
                                               socket=opts.get("socket"))
        made = cls(sb, envs)
        if made._envs:
            # A cell's environment is the interpreter's: set once in the default Python context.
            await made._env_prelude("python", None)
        return made

    async def _connect_class(cls, sandbox_id: str, timeout: Optional[int] = None, **opts: Any) -> "AsyncSandbox":  # noqa: N805
        async with _Errors():
            sb = await _sp.AsyncSandbox.connect(sandbox_id, socket=opts.get("socket"))
            if sb.state in ("paused", "hibernated"):
                await sb.resume()
        return cls(sb)

    async def _connect_instance(self, timeout: Optional[int] = None, **opts: Any) -> "AsyncSandbox":
        await self.resume()
        return self

    async def _env_prelude(self, language: str, context: Optional[str]) -> None:
        if not self._envs:
            return
        if language == "python":
            code = "import os as _os; _os.environ.update(%r); del _os" % (self._envs,)
        else:
            code = "; ".join("export %s=%s" % (k, "'" + v.replace("'", "'\\''") + "'") for k, v in self._envs.items())
        await self._sp.run_code(code, context=context)

    async def _context_for(self, language: Optional[str], context: Any) -> Optional[str]:
        if context is not None:
            if language is not None:
                raise InvalidArgumentException("give a context or a language, not both")
            return context.context_id if isinstance(context, Context) else str(context)
        lang = (language or "python").lower()
        if lang == "python":
            return None
        if lang not in ("bash", "sh"):
            raise _unsupported(f"run_code(language={language!r})", "Sandpit runs Python and bash cells")
        if "bash" not in self._contexts:
            self._contexts["bash"] = await self._sp.create_context("bash")
            await self._env_prelude("bash", self._contexts["bash"])
        return self._contexts["bash"]

    async def run_code(self, code: str, language: Optional[str] = None, context: Any = None,
                       on_stdout: Optional[Callable[[OutputMessage], Any]] = None,
                       on_stderr: Optional[Callable[[OutputMessage], Any]] = None,
                       on_result: Optional[Callable[[Result], Any]] = None,
                       on_error: Optional[Callable[[ExecutionError], Any]] = None,
                       envs: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
                       request_timeout: Optional[float] = None) -> Execution:
        """Runs a cell; state persists between cells of a context. A timeout (default 300 s) raises
        :class:`TimeoutException`; an exception in the cell is ``execution.error`` (and ``on_error``)."""
        if envs:
            raise _unsupported("run_code(envs=...)", "a cell's environment is its interpreter's: set os.environ in the cell, "
                                                     "or pass envs to Sandbox.create")
        ctx = await self._context_for(language, context)
        # Sandpit streams chunks as they are written; E2B hands out lines: whole lines go to the
        # callbacks as they complete, the rest when the cell ends.
        out_lines, err_lines = _Lines(on_stdout, False), _Lines(on_stderr, True)
        async with _Errors():
            ex = await self._sp.run_code(code, context=ctx, on_stdout=out_lines.feed, on_stderr=err_lines.feed,
                                         timeout=timeout or DEFAULT_CELL_TIMEOUT)
        await out_lines.flush()
        await err_lines.flush()
        out = _execution(ex)
        if ex.timed_out:
            raise TimeoutException(f"the cell did not finish within {timeout or DEFAULT_CELL_TIMEOUT:g} s (it was interrupted; "
                                   "the context keeps its state)")
        for r in out.results:
            await _call(on_result, r)
        if out.error is not None:
            await _call(on_error, out.error)
        return out

    async def create_code_context(self, cwd: Optional[str] = None, language: Optional[str] = None,
                                  request_timeout: Optional[float] = None) -> Context:
        lang = (language or "python").lower()
        if lang not in ("python", "bash"):
            raise _unsupported(f"create_code_context(language={language!r})", "Sandpit runs Python and bash cells")
        async with _Errors():
            cid = await self._sp.create_context(lang)
            await self._env_prelude(lang, cid)
            if cwd and cwd != _HOME:
                ex = await self._sp.run_code(f"import os as _os; _os.chdir({cwd!r}); del _os" if lang == "python" else f"cd {cwd!r}", context=cid)
                if ex.error:
                    raise InvalidArgumentException(f"cwd {cwd}: {ex.error.value}")
        return Context(context_id=cid, language=lang, cwd=cwd or _HOME)

    async def list_code_contexts(self) -> List[Context]:
        async with _Errors():
            r = await self._sp._call("context.list", {})
        return [Context(context_id=c["contextId"], language=c["language"], cwd=_HOME) for c in r.get("contexts", [])]

    async def remove_code_context(self, context: Union[Context, str]) -> None:
        cid = context.context_id if isinstance(context, Context) else context
        async with _Errors():
            await self._sp._call("context.delete", {"contextId": cid})

    async def restart_code_context(self, context: Union[Context, str]) -> None:
        """Ends the context's interpreter; its next cell starts a fresh one (Sandpit says ``restarted``)."""
        cid = context.context_id if isinstance(context, Context) else context
        async with _Errors():
            await self._sp.run_code("import os; os._exit(0)", context=cid)

    async def get_host(self, port: int) -> str:
        """``host:port`` on this machine's loopback where the sandbox's ``port`` is reachable (plain
        HTTP or TCP, no token: use ``http://``, not ``https://``)."""
        if port not in self._hosts:
            async with _Errors():
                e = await self._sp._call("port.expose", {"port": port, "token": False})
            self._hosts[port] = f"127.0.0.1:{e['hostPort']}"
        return self._hosts[port]

    async def set_timeout(self, timeout: int) -> None:
        """Keeps the sandbox for at least ``timeout`` more seconds (then: deleted once idle that long)."""
        async with _Errors():
            await self._sp.keepalive(timeout)

    async def get_info(self, request_timeout: Optional[float] = None) -> SandboxInfo:
        async with _Errors():
            return _info(await self._sp.refresh())

    async def is_running(self, request_timeout: Optional[float] = None) -> bool:
        try:
            return (await self._sp.refresh()).get("state") in ("running", "paused", "starting")
        except SandpitError:
            return False

    async def _kill_instance(self, request_timeout: Optional[float] = None) -> bool:
        try:
            await self._sp.delete()
            return True
        except NotFoundError:
            return False

    async def _kill_class(cls, sandbox_id: str, **opts: Any) -> bool:  # noqa: N805
        return await cls.kill_by_id(sandbox_id, **opts)

    async def pause(self, **_: Any) -> str:
        """Freezes the sandbox (memory kept); ``connect`` resumes it."""
        async with _Errors():
            await self._sp.pause()
        return self.sandbox_id

    beta_pause = pause

    async def resume(self) -> None:
        async with _Errors():
            await self._sp.resume()

    @staticmethod
    async def list(query: Optional[SandboxQuery] = None, limit: Optional[int] = None, next_token: Optional[str] = None,
                   **opts: Any) -> "AsyncSandboxPaginator":
        client = await _sp.AsyncClient.connect(opts.get("socket"))
        try:
            states = query.state if query and query.state else None
            found = await client.list_sandboxes(metadata=query.metadata if query else None)
        finally:
            await client.close()
        return AsyncSandboxPaginator([_info(i) for i in found if states is None or i.get("state") in states])

    @staticmethod
    async def kill_by_id(sandbox_id: str, **opts: Any) -> bool:
        client = await _sp.AsyncClient.connect(opts.get("socket"))
        try:
            await client.call("sandbox.delete", {"sandboxId": sandbox_id})
            return True
        except NotFoundError:
            return False
        finally:
            await client.close()

    # --- Sandpit's own -------------------------------------------------------------------------------

    async def checkpoints(self) -> List[Any]:
        """Every step's checkpoint (Sandpit): ``restore(step)`` goes back to one."""
        return await self._sp.checkpoints.list()

    async def restore(self, step: Optional[int] = None, *, checkpoint_id: Optional[str] = None) -> Any:
        """Files, and interpreter state where a frozen copy was kept, back to ``step`` (Sandpit)."""
        async with _Errors():
            return await self._sp.restore(step, checkpoint_id=checkpoint_id)

    async def fork(self, timeout: Optional[int] = None, count: int = 1, *, step: Optional[int] = None) -> List["AsyncSandbox"]:
        """``count`` new sandboxes from a step's files and interpreters (default: now)."""
        async with _Errors():
            return [AsyncSandbox(s, self._envs) for s in await self._sp.fork(count, step=step)]

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._kill_instance()


AsyncSandbox.connect = _either(AsyncSandbox._connect_class, AsyncSandbox._connect_instance)  # type: ignore[assignment]
AsyncSandbox.kill = _either(AsyncSandbox._kill_class, AsyncSandbox._kill_instance)  # type: ignore[assignment]


class AsyncSandboxPaginator:
    def __init__(self, items: List[SandboxInfo]) -> None:
        self._items: Optional[List[SandboxInfo]] = items

    @property
    def has_next(self) -> bool:
        return self._items is not None

    async def next_items(self) -> List[SandboxInfo]:
        items, self._items = self._items or [], None
        return items


class _Lines:
    """Chunks of a stream in, OutputMessages of whole lines out (to a sync or async callback)."""

    def __init__(self, fn: Optional[Callable[[OutputMessage], Any]], is_err: bool) -> None:
        self._fn, self._err, self._pending = fn, is_err, ""

    def _emit(self, text: str) -> Any:
        return self._fn(OutputMessage(line=text, timestamp=time.time_ns() // 1000, error=self._err)) if self._fn else None

    def feed(self, chunk: str) -> Any:
        if self._fn is None:
            return None
        lines = (self._pending + chunk).splitlines(keepends=True)
        self._pending = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        results = [self._emit(line) for line in lines]
        waits = [r for r in results if inspect.isawaitable(r)]
        return asyncio.gather(*waits) if waits else None

    async def flush(self) -> None:
        if self._pending:
            text, self._pending = self._pending, ""
            r = self._emit(text)
            if inspect.isawaitable(r):
                await r


def _lines(chunks: List[str]) -> List[str]:
    return "".join(chunks).splitlines(keepends=True)


def _execution(ex: _SpExecution) -> Execution:
    results = [Result.from_bundle(r.raw, r.is_main_result) for r in ex.results]
    err = ExecutionError(ex.error.name, ex.error.value, ex.error.traceback) if ex.error else None
    return Execution(results=results, logs=Logs(_lines(ex.logs.stdout), _lines(ex.logs.stderr)), error=err,
                     execution_count=ex.execution_count, step=ex.raw.get("step"))


# --- synchronous API: the asyncio objects, each call run on Sandpit's shared loop thread ----------

class _Sync:
    def __init__(self, loop: LoopThread, target: Any) -> None:
        self._loop = loop
        self._t = target

    def _run(self, aw: Awaitable[Any]) -> Any:
        return self._loop.run(aw)


class CommandHandle(_Sync):
    @property
    def pid(self) -> str:
        return self._t.pid

    def wait(self, on_pty: Any = None, on_stdout: Optional[Callable[[str], Any]] = None,
             on_stderr: Optional[Callable[[str], Any]] = None) -> CommandResult:
        return self._run(self._t.wait(on_stdout=on_stdout, on_stderr=on_stderr))

    def kill(self) -> bool:
        return self._run(self._t.kill())

    def send_stdin(self, data: Union[str, bytes], request_timeout: Optional[float] = None) -> None:
        self._run(self._t.send_stdin(data))

    def close_stdin(self, request_timeout: Optional[float] = None) -> None:
        self._run(self._t.close_stdin())

    def disconnect(self) -> None:
        self._run(self._t.disconnect())


class Commands(_Sync):
    def run(self, cmd: str, background: bool = False, envs: Optional[Dict[str, str]] = None, user: Optional[str] = None,
            cwd: Optional[str] = None, on_stdout: Optional[Callable[[str], Any]] = None, on_stderr: Optional[Callable[[str], Any]] = None,
            stdin: Optional[bool] = None, timeout: Optional[float] = DEFAULT_COMMAND_TIMEOUT,
            request_timeout: Optional[float] = None, **kw: Any) -> Union[CommandResult, CommandHandle]:
        """See :meth:`AsyncCommands.run`."""
        r = self._run(self._t.run(cmd, background=background, envs=envs, user=user, cwd=cwd, on_stdout=on_stdout, on_stderr=on_stderr,
                                  stdin=stdin, timeout=timeout, **kw))
        return CommandHandle(self._loop, r) if background else r

    def kill(self, pid: str, request_timeout: Optional[float] = None) -> bool:
        return self._run(self._t.kill(pid))

    def list(self, request_timeout: Optional[float] = None) -> List[ProcessInfo]:
        return self._run(self._t.list())

    def send_stdin(self, pid: str, data: Union[str, bytes], request_timeout: Optional[float] = None) -> None:
        self._run(self._t.send_stdin(pid, data))

    def close_stdin(self, pid: str, request_timeout: Optional[float] = None) -> None:
        self._run(self._t.close_stdin(pid))

    def connect(self, pid: str, timeout: Optional[float] = None, request_timeout: Optional[float] = None,
                retain_output: bool = True, on_stdout: Optional[Callable[[str], Any]] = None,
                on_stderr: Optional[Callable[[str], Any]] = None) -> CommandHandle:
        return CommandHandle(self._loop, self._run(self._t.connect(pid, on_stdout=on_stdout, on_stderr=on_stderr)))


class WatchHandle(_Sync):
    def get_new_events(self) -> List[FilesystemEvent]:
        return self._run(self._t.get_new_events())

    def stop(self) -> None:
        self._run(self._t.stop())


class Filesystem(_Sync):
    def read(self, path: str, format: str = "text", user: Optional[str] = None, request_timeout: Optional[float] = None,
             **kw: Any) -> Union[str, bytearray, Iterator[bytes]]:
        return self._run(self._t.read(path, format=format))

    def write(self, path: Any, data: Any = None, user: Optional[str] = None, request_timeout: Optional[float] = None, **kw: Any) -> Any:
        return self._run(self._t.write(path, data))

    def write_files(self, files: List[Any], user: Optional[str] = None, request_timeout: Optional[float] = None, **kw: Any) -> List[WriteInfo]:
        return self._run(self._t.write_files(files))

    def list(self, path: str, depth: Optional[int] = 1, user: Optional[str] = None, request_timeout: Optional[float] = None) -> List[EntryInfo]:
        return self._run(self._t.list(path, depth=depth))

    def exists(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> bool:
        return self._run(self._t.exists(path))

    def get_info(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> EntryInfo:
        return self._run(self._t.get_info(path))

    def remove(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> None:
        self._run(self._t.remove(path))

    def rename(self, old_path: str, new_path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> EntryInfo:
        return self._run(self._t.rename(old_path, new_path))

    def make_dir(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None) -> bool:
        return self._run(self._t.make_dir(path))

    def watch_dir(self, path: str, user: Optional[str] = None, request_timeout: Optional[float] = None, recursive: bool = False,
                  **kw: Any) -> WatchHandle:
        return WatchHandle(self._loop, self._run(self._t.watch_dir(path, recursive=recursive)))


class SandboxPaginator(_Sync):
    @property
    def has_next(self) -> bool:
        return self._t.has_next

    def next_items(self) -> List[SandboxInfo]:
        return self._run(self._t.next_items())


class Sandbox(_Sync):
    """An E2B-shaped sandbox: ``with Sandbox.create() as sbx: ...``. ``Sandbox()`` also creates one, as
    E2B's older SDKs did."""

    def __init__(self, template: Optional[str] = None, timeout: Optional[int] = None, metadata: Optional[Dict[str, str]] = None,
                 envs: Optional[Dict[str, str]] = None, *, _async: Optional[AsyncSandbox] = None, **opts: Any) -> None:
        loop = LoopThread.shared()
        target = _async or loop.run(AsyncSandbox.create(template, timeout=timeout, metadata=metadata, envs=envs, **opts))
        super().__init__(loop, target)
        self.aio = target
        self.commands = Commands(loop, target.commands)
        self.files = Filesystem(loop, target.files)

    @property
    def sandbox_id(self) -> str:
        return self.aio.sandbox_id

    @classmethod
    def create(cls, template: Optional[str] = None, timeout: Optional[int] = None, metadata: Optional[Dict[str, str]] = None,
               envs: Optional[Dict[str, str]] = None, secure: bool = True, allow_internet_access: bool = True, **opts: Any) -> "Sandbox":
        """See :meth:`AsyncSandbox.create`."""
        return cls(template, timeout, metadata, envs, **opts)

    def _connect_instance(self, timeout: Optional[int] = None, **opts: Any) -> "Sandbox":
        self._run(self.aio.resume())
        return self

    def _connect_class(cls, sandbox_id: str, timeout: Optional[int] = None, **opts: Any) -> "Sandbox":  # noqa: N805
        return cls(_async=LoopThread.shared().run(AsyncSandbox._connect_class(AsyncSandbox, sandbox_id, timeout, **opts)))

    connect = _either(_connect_class, _connect_instance)

    def _kill_instance(self, request_timeout: Optional[float] = None) -> bool:
        return self._run(self.aio.kill())

    def _kill_class(cls, sandbox_id: str, **opts: Any) -> bool:  # noqa: N805
        return LoopThread.shared().run(AsyncSandbox.kill_by_id(sandbox_id, **opts))

    kill = _either(_kill_class, _kill_instance)

    def run_code(self, code: str, language: Optional[str] = None, context: Any = None,
                 on_stdout: Optional[Callable[[OutputMessage], Any]] = None, on_stderr: Optional[Callable[[OutputMessage], Any]] = None,
                 on_result: Optional[Callable[[Result], Any]] = None, on_error: Optional[Callable[[ExecutionError], Any]] = None,
                 envs: Optional[Dict[str, str]] = None, timeout: Optional[float] = None, request_timeout: Optional[float] = None) -> Execution:
        """See :meth:`AsyncSandbox.run_code`."""
        return self._run(self.aio.run_code(code, language=language, context=context, on_stdout=on_stdout, on_stderr=on_stderr,
                                           on_result=on_result, on_error=on_error, envs=envs, timeout=timeout))

    def create_code_context(self, cwd: Optional[str] = None, language: Optional[str] = None,
                            request_timeout: Optional[float] = None) -> Context:
        return self._run(self.aio.create_code_context(cwd=cwd, language=language))

    def list_code_contexts(self) -> List[Context]:
        return self._run(self.aio.list_code_contexts())

    def remove_code_context(self, context: Union[Context, str]) -> None:
        self._run(self.aio.remove_code_context(context))

    def restart_code_context(self, context: Union[Context, str]) -> None:
        self._run(self.aio.restart_code_context(context))

    def get_host(self, port: int) -> str:
        return self._run(self.aio.get_host(port))

    def _set_timeout_instance(self, timeout: int) -> None:
        self._run(self.aio.set_timeout(timeout))

    def _set_timeout_class(cls, sandbox_id: str, timeout: int, **opts: Any) -> None:  # noqa: N805
        loop = LoopThread.shared()
        sbx = loop.run(AsyncSandbox._connect_class(AsyncSandbox, sandbox_id, **opts))
        try:
            loop.run(sbx.set_timeout(timeout))
        finally:
            loop.run(sbx._sp.client.close())

    set_timeout = _either(_set_timeout_class, _set_timeout_instance)

    def _get_info_instance(self, request_timeout: Optional[float] = None) -> SandboxInfo:
        return self._run(self.aio.get_info())

    def _get_info_class(cls, sandbox_id: str, **opts: Any) -> SandboxInfo:  # noqa: N805
        loop = LoopThread.shared()
        sbx = loop.run(AsyncSandbox._connect_class(AsyncSandbox, sandbox_id, **opts))
        try:
            return loop.run(sbx.get_info())
        finally:
            loop.run(sbx._sp.client.close())

    get_info = _either(_get_info_class, _get_info_instance)

    def is_running(self, request_timeout: Optional[float] = None) -> bool:
        return self._run(self.aio.is_running())

    def pause(self, **kw: Any) -> str:
        return self._run(self.aio.pause())

    beta_pause = pause

    @staticmethod
    def list(query: Optional[SandboxQuery] = None, limit: Optional[int] = None, next_token: Optional[str] = None,
             **opts: Any) -> SandboxPaginator:
        loop = LoopThread.shared()
        return SandboxPaginator(loop, loop.run(AsyncSandbox.list(query, limit, next_token, **opts)))

    def checkpoints(self) -> List[Any]:
        return self._run(self.aio.checkpoints())

    def restore(self, step: Optional[int] = None, *, checkpoint_id: Optional[str] = None) -> Any:
        return self._run(self.aio.restore(step, checkpoint_id=checkpoint_id))

    def fork(self, timeout: Optional[int] = None, count: int = 1, *, step: Optional[int] = None) -> List["Sandbox"]:
        return [Sandbox(_async=s) for s in self._run(self.aio.fork(timeout, count, step=step))]

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._kill_instance()


__all__ = [
    "AsyncCommandHandle", "AsyncCommands", "AsyncFilesystem", "AsyncSandbox", "AsyncSandboxPaginator", "AsyncWatchHandle",
    "CommandExitException", "CommandHandle", "CommandResult", "Commands", "Context", "EntryInfo", "Execution", "ExecutionError",
    "FileNotFoundException", "FileType", "Filesystem", "FilesystemEvent", "FilesystemEventType", "InvalidArgumentException", "Logs",
    "NotEnoughSpaceException", "NotFoundException", "OutputMessage", "ProcessInfo", "Result", "Sandbox", "SandboxException",
    "SandboxInfo", "SandboxNotFoundException", "SandboxPaginator", "SandboxQuery", "TimeoutException", "WatchHandle", "WriteInfo",
]
