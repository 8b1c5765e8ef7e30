"""Python client for Sandpit, a local code-interpreter runtime: isolated, checkpointed sandboxes.

Synchronous::

    from sandpit import Sandbox
    with Sandbox.create() as sb:
        print(sb.run_code("1 + 1").text)            # 2
        print(sb.commands.run("uname -r").stdout)

Asyncio::

    from sandpit import AsyncSandbox
    async with await AsyncSandbox.create() as sb:
        ex = await sb.run_code("print('hi')", on_stdout=print)

The client talks to the daemon on ``SANDPIT_SOCKET`` (or ``socket=``), or starts ``sandpit serve`` as a
child when no socket is given. Standard library only.
"""
from ._async import (AsyncClient, AsyncCommandHandle, AsyncCommands, AsyncFiles, AsyncPty, AsyncPtyHandle, AsyncSandbox,
                     AsyncWatchHandle)
from .errors import (BuildFailedError, BusyError, CheckpointCorruptError, ConflictError, ConnectionClosedError, InternalError,
                     InvalidParamsError, InvalidRequestError, InvalidStateError, LimitExceededError,
                     MethodNotFoundError, NotFoundError, ParseError, PermissionDeniedError, RequestTooLargeError,
                     SandboxFailedError, SandpitError, SandpitTimeoutError, UnavailableError)
from .models import (Checkpoint, CommandPoll, CommandResult, EntryInfo, Execution, ExecutionError, FileEvent, Logs, RestoreResult,
                     Result)
from .sandbox import Client, CommandHandle, Commands, Files, Pty, PtyHandle, Sandbox, WatchHandle

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncCommandHandle", "AsyncCommands", "AsyncFiles", "AsyncPty", "AsyncPtyHandle", "AsyncSandbox",
    "AsyncWatchHandle", "BuildFailedError", "BusyError", "Checkpoint", "CheckpointCorruptError", "Client", "CommandHandle", "CommandPoll",
    "CommandResult", "Commands",
    "ConflictError", "ConnectionClosedError", "EntryInfo", "Execution", "ExecutionError", "FileEvent", "Files",
    "InternalError", "InvalidParamsError", "InvalidRequestError", "InvalidStateError", "LimitExceededError", "Logs",
    "MethodNotFoundError", "NotFoundError", "ParseError", "PermissionDeniedError", "RequestTooLargeError",
    "Pty", "PtyHandle", "RestoreResult", "Result", "Sandbox", "SandboxFailedError", "SandpitError", "SandpitTimeoutError",
    "UnavailableError", "WatchHandle",
]
