"""JSON-RPC 2.0 lines over a Unix socket or a child ``sandpit serve``: many requests in flight on one
connection, notifications routed to the request they belong to (by ``requestId``)."""
from __future__ import annotations

import asyncio
import atexit
import inspect
import itertools
import json
import os
import shutil
import threading
from typing import Any, Awaitable, Callable, Dict, Optional, Sequence, TypeVar

from .errors import ConnectionClosedError, error_from_wire

NotificationHandler = Callable[[str, Dict[str, Any]], Any]
T = TypeVar("T")

# A response line may carry a 16 MiB file read as base64.
_LINE_LIMIT = 64 << 20


def default_socket() -> Optional[str]:
    """``SANDPIT_SOCKET`` when it names a socket, else None."""
    s = os.environ.get("SANDPIT_SOCKET")
    return s or None


class AsyncConnection:
    """One connection to a Sandpit daemon (asyncio). Create it with :meth:`open`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 process: Optional[asyncio.subprocess.Process] = None) -> None:
        self._reader = reader
        self._writer = writer
        self._process = process
        # A daemon on a Unix socket of this host can take this process's file descriptors
        # (fs.upload / fs.download with ``fd``); a child daemon on stdio cannot.
        self.passes_fds = process is None
        self._ids = itertools.count(1)
        self._pending: Dict[int, asyncio.Future] = {}
        self._listeners: Dict[int, NotificationHandler] = {}
        self._closed: Optional[BaseException] = None
        self._write_lock = asyncio.Lock()
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(cls, socket: Optional[str] = None, *, sandpit: Optional[str] = None,
                   serve_args: Sequence[str] = ()) -> "AsyncConnection":
        """Connects to the daemon on ``socket`` (default: ``SANDPIT_SOCKET``). Without one, starts
        ``sandpit serve`` as a child speaking on its stdin/stdout (``sandpit``: the binary, default
        ``SANDPIT_BIN`` or ``sandpit`` on PATH; ``serve_args``: e.g. ``["--data-dir", "/tmp/sp"]``).
        The child is stopped when the connection closes."""
        path = socket or default_socket()
        if path:
            try:
                reader, writer = await asyncio.open_unix_connection(path, limit=_LINE_LIMIT)
            except OSError as e:
                raise ConnectionClosedError(f"cannot connect to the sandpit daemon at {path}: {e.strerror or e} "
                                            f"(is `sandpit serve --socket {path}` running?)") from e
            return cls(reader, writer)
        exe = sandpit or os.environ.get("SANDPIT_BIN") or shutil.which("sandpit")
        if not exe:
            raise ConnectionClosedError("no daemon socket given (SANDPIT_SOCKET) and no `sandpit` binary found "
                                        "(set SANDPIT_BIN or put it on PATH)")
        proc = await asyncio.create_subprocess_exec(exe, "serve", *serve_args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, limit=_LINE_LIMIT)
        assert proc.stdout is not None and proc.stdin is not None
        # A subprocess pipe pair behaves as a reader/writer pair.
        return cls(proc.stdout, proc.stdin, proc)  # type: ignore[arg-type]

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None, *,
                   on_notification: Optional[NotificationHandler] = None, timeout: Optional[float] = None) -> Any:
        """Sends one request and returns its ``result``; raises the typed :class:`SandpitError` for an
        ``error``. ``on_notification(method, params)`` receives the request's notifications, in order,
        before the call returns."""
        return (await self.call_listening(method, params, on_notification, keep_listening=False, timeout=timeout))[1]

    async def call_listening(self, method: str, params: Optional[Dict[str, Any]],
                             on_notification: Optional[NotificationHandler], *, keep_listening: bool = True,
                             timeout: Optional[float] = None) -> "tuple[int, Any]":
        """Like :meth:`call`, returning ``(request id, result)``; with ``keep_listening`` the request's
        notifications keep coming after the response (``fs.watch``) until :meth:`stop_listening`."""
        if self._closed is not None:
            raise ConnectionClosedError("the connection to the daemon is closed")
        rid = next(self._ids)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if on_notification is not None:
            self._listeners[rid] = on_notification
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}},
                          separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            async with self._write_lock:
                self._writer.write(line.encode())
                await self._writer.drain()
            result = await asyncio.wait_for(fut, timeout) if timeout is not None else await fut
            return rid, result
        except (ConnectionError, BrokenPipeError) as e:
            self._listeners.pop(rid, None)
            raise ConnectionClosedError(f"the daemon went away: {e}") from e
        except BaseException:
            self._listeners.pop(rid, None)
            raise
        finally:
            self._pending.pop(rid, None)
            if not keep_listening:
                self._listeners.pop(rid, None)

    def stop_listening(self, request_id: int) -> None:
        self._listeners.pop(request_id, None)

    async def _read_loop(self) -> None:
        err: BaseException = ConnectionClosedError("the daemon closed the connection")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                rid = msg.get("id")
                if "method" in msg and rid is None:
                    params = msg.get("params") or {}
                    handler = self._listeners.get(params.get("requestId"))
                    if handler is not None:
                        try:
                            r = handler(msg["method"], params)
                            if inspect.isawaitable(r):
                                await r
                        except Exception:  # a callback's bug must not stop the connection
                            import traceback
                            traceback.print_exc()
                    continue
                fut = self._pending.get(rid) if isinstance(rid, int) else None
                if fut is None or fut.done():
                    continue
                if "error" in msg:
                    fut.set_exception(error_from_wire(msg["error"]))
                else:
                    fut.set_result(msg.get("result"))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            err = ConnectionClosedError(f"the connection to the daemon failed: {e}")
        except asyncio.CancelledError:
            err = ConnectionClosedError("the connection was closed")
        self._closed = err
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)

    async def close(self) -> None:
        """Closes the connection (and stops the child daemon, which deletes its sandboxes)."""
        if self._closed is None:
            self._closed = ConnectionClosedError("the connection was closed")
        try:
            self._writer.close()
        except Exception:
            pass
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), 30)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._reader_task.cancel()
        try:
            await self._reader_task
        except BaseException:
            pass


class LoopThread:
    """An asyncio loop on a daemon thread: the sync API runs its coroutines here, so one connection
    serves many threads at once. Callbacks run on this thread."""

    _shared: Optional["LoopThread"] = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sandpit-client", daemon=True)
        self._thread.start()
        # At interpreter exit, end the loop's tasks (connection readers) cleanly: a daemon thread's
        # loop would otherwise be collected with them pending ("Task was destroyed but it is pending!").
        atexit.register(self.shutdown)

    def shutdown(self) -> None:
        """Cancels the loop's tasks, stops the loop and waits for its thread (idempotent)."""
        if self.loop.is_closed() or not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    @classmethod
    def shared(cls) -> "LoopThread":
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = LoopThread()
            return cls._shared

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync Sandpit call from inside one of its own callbacks would deadlock; "
                               "use the asyncio API (AsyncSandbox) there")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]


def decode_chunk(params: Dict[str, Any]) -> bytes:
    """The bytes of an ``exec.output`` / ``code.output`` / ``fs.chunk`` notification."""
    data = params.get("data", "")
    if params.get("encoding") == "base64":
        import base64
        return base64.b64decode(data)
    return data.encode()

