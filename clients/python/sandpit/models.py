"""What Sandpit calls return: plain dataclasses over the wire objects (``raw`` keeps the whole object)."""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

_FIGURE = re.compile(r"^<Figure \d+>$")


@dataclass
class Result:
    """One rich result of a cell: a MIME bundle. The cell's last expression is the *main* result;
    each matplotlib figure the cell left open comes as its own result with ``png``."""

    raw: Dict[str, Any]
    #: Whether this is the value of the cell's last expression (from the daemon's ``mainResult``;
    #: None from a daemon that does not say, which leaves the guess by figure).
    main: Optional[bool] = None

    @property
    def text(self) -> Optional[str]:
        return self.raw.get("text/plain")

    @property
    def html(self) -> Optional[str]:
        return self.raw.get("text/html")

    @property
    def markdown(self) -> Optional[str]:
        return self.raw.get("text/markdown")

    @property
    def svg(self) -> Optional[str]:
        return self.raw.get("image/svg+xml")

    @property
    def latex(self) -> Optional[str]:
        return self.raw.get("text/latex")

    @property
    def json(self) -> Any:
        return self.raw.get("application/json")

    @property
    def png(self) -> Optional[bytes]:
        """The PNG image, decoded (None when the result has none)."""
        b = self.raw.get("image/png")
        return base64.b64decode(b) if b else None

    @property
    def jpeg(self) -> Optional[bytes]:
        b = self.raw.get("image/jpeg")
        return base64.b64decode(b) if b else None

    @property
    def is_figure(self) -> bool:
        return "image/png" in self.raw and bool(_FIGURE.match(self.raw.get("text/plain", "")))

    @property
    def is_main_result(self) -> bool:
        """True for the value of the cell's last expression (not something it passed to ``display()``
        or a figure it drew)."""
        return self.main if self.main is not None else not self.is_figure

    def formats(self) -> List[str]:
        return list(self.raw)


@dataclass
class ExecutionError:
    """An exception raised by a cell: ``traceback`` points at the cell's lines (``<cell-N>``)."""

    name: str
    value: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass
class Logs:
    """What a cell or command printed, chunk by chunk as it arrived."""

    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


@dataclass
class Execution:
    """The outcome of :meth:`Sandbox.run_code`."""

    results: List[Result]
    logs: Logs
    error: Optional[ExecutionError]
    execution_count: int
    restarted: bool
    timed_out: bool
    duration_ms: float
    context_id: str
    raw: Dict[str, Any]

    @property
    def text(self) -> Optional[str]:
        """The ``text/plain`` of the main result (the cell's last expression), if any."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None

    @property
    def step(self) -> Optional[int]:
        return self.raw.get("step")

    @classmethod
    def from_wire(cls, r: Dict[str, Any], logs: Logs) -> "Execution":
        e = r.get("error")
        said = "mainResult" in r   # null: the cell had no value (only displays and figures)
        results = [Result(b, i == r["mainResult"] if said else None) for i, b in enumerate(r.get("results") or [])]
        return cls(results=results, logs=logs,
                   error=ExecutionError(e.get("name", ""), e.get("value", ""), e.get("traceback", "")) if e else None,
                   execution_count=r.get("executionCount", 0), restarted=bool(r.get("restarted")),
                   timed_out=bool(r.get("timedOut")), duration_ms=float(r.get("durationMs", 0)),
                   context_id=r.get("contextId", "default"), raw=r)


@dataclass
class CommandResult:
    """The outcome of a command (:meth:`Commands.run`)."""

    exec_id: str
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    oom_killed: bool
    signal: Optional[str]
    duration_ms: float
    raw: Dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def step(self) -> Optional[int]:
        return self.raw.get("step")

    @classmethod
    def from_wire(cls, r: Dict[str, Any], stdout: str, stderr: str) -> "CommandResult":
        return cls(exec_id=r.get("execId", ""), exit_code=r.get("exitCode", -1), stdout=stdout, stderr=stderr,
                   timed_out=bool(r.get("timedOut")), oom_killed=bool(r.get("oomKilled")), signal=r.get("signal"),
                   duration_ms=float(r.get("durationMs", 0)), raw=r)


@dataclass
class CommandPoll:
    """What a yielding command produced so far (``commands.run(..., yield_ms=)``, ``handle.poll()``)."""

    exec_id: str
    running: bool
    stdout: str
    stderr: str
    next_seq: int
    omitted_bytes: int
    result: Optional[CommandResult]
    raw: Dict[str, Any]

    @property
    def exit_code(self) -> Optional[int]:
        return None if self.result is None else self.result.exit_code

    @classmethod
    def from_wire(cls, r: Dict[str, Any]) -> "CommandPoll":
        import base64
        out: List[str] = []
        err: List[str] = []
        for c in r.get("chunks", []):
            data = c.get("data", "")
            text = base64.b64decode(data).decode(errors="replace") if c.get("encoding") == "base64" else data
            if c.get("stream") == "stderr":
                err.append(text)
            elif c.get("stream") != "stdin":
                out.append(text)
        running = bool(r.get("running"))
        result = None if running else CommandResult.from_wire(r, "".join(out), "".join(err))
        return cls(exec_id=r.get("execId", ""), running=running, stdout="".join(out), stderr="".join(err),
                   next_seq=int(r.get("nextSeq", 0)), omitted_bytes=int(r.get("omittedBytes", 0)), result=result, raw=r)


@dataclass
class EntryInfo:
    """A file, directory or link in a sandbox (``fs.list`` / ``fs.stat``)."""

    path: str
    name: str
    type: str
    size: int
    mode: int
    mtime: Optional[str]
    target: Optional[str]
    raw: Dict[str, Any]

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @classmethod
    def from_wire(cls, e: Dict[str, Any]) -> "EntryInfo":
        return cls(path=e.get("path", ""), name=e.get("name", ""), type=e.get("type", ""), size=e.get("size", 0),
                   mode=e.get("mode", 0), mtime=e.get("mtime"), target=e.get("target"), raw=e)


@dataclass
class Checkpoint:
    """A snapshot of the sandbox's files after a step."""

    checkpoint_id: str
    step: int
    name: Optional[str]
    created_at: str
    parent_id: Optional[str]
    raw: Dict[str, Any]

    @classmethod
    def from_wire(cls, c: Dict[str, Any]) -> "Checkpoint":
        return cls(checkpoint_id=c.get("checkpointId", ""), step=c.get("step", 0), name=c.get("name"),
                   created_at=c.get("createdAt", ""), parent_id=c.get("parentId"), raw=c)


@dataclass
class RestoreResult:
    """What :meth:`Sandbox.restore` brought back (``restored``) and what it could not (``lost``).
    ``contexts`` maps each interpreter context to ``"restored"`` (its variables are as they were after
    that step) or ``"lost"`` (its next cell starts fresh)."""

    step: int
    restored: List[str]
    lost: List[str]
    checkpoint: Checkpoint
    raw: Dict[str, Any]
    contexts: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, r: Dict[str, Any]) -> "RestoreResult":
        return cls(step=r.get("step", 0), restored=r.get("restored", []), lost=r.get("lost", []),
                   checkpoint=Checkpoint.from_wire(r.get("checkpoint") or {}), raw=r,
                   contexts={c["contextId"]: c["interpreter"] for c in r.get("contexts") or []})


@dataclass
class FileEvent:
    """A change in a watched directory: ``type`` is created, modified, deleted, renamed, overflow or ended."""

    type: str
    path: str
    from_path: Optional[str]
    is_dir: bool
    raw: Dict[str, Any]

    @classmethod
    def from_wire(cls, e: Dict[str, Any]) -> "FileEvent":
        return cls(type=e.get("type", ""), path=e.get("path", ""), from_path=e.get("from"),
                   is_dir=bool(e.get("isDir")), raw=e)
