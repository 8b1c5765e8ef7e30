"""A LangChain Deep Agents sandbox backend on Sandpit (``pip install 'sandpit[deepagents]'``).

    from deepagents import create_deep_agent
    from sandpit.adapters.deepagents import SandpitProvider
    provider = SandpitProvider(template="default")
    backend = provider.get_or_create()              # a new sandbox (or sandbox_id=... to reattach)
    agent = create_deep_agent(model, backend=backend)
    ...
    provider.delete(backend.id)

``SandpitBackend`` implements Deep Agents' ``BaseSandbox``: ``execute`` (stdout and stderr merged in
the order written, the exit code, and ``truncated`` when the output passed the policy's retained-output
budget or ``max_output_bytes``), ``upload_files`` and ``download_files`` with per-file errors in Deep
Agents' vocabulary (``file_not_found``, ``permission_denied``, ``is_directory``, ``invalid_path``); the
file tools (``ls``, ``read_file``, ``write_file``, ``edit_file``, ``glob``, ``grep``) are Deep Agents' own,
built on those. Parallel tool calls share the backend: the client multiplexes them on one connection.
``SandpitProvider`` has the provider shape of the Deep Agents CLI (``get_or_create``, ``delete``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from deepagents.backends.protocol import ExecuteResponse, FileDownloadResponse, FileUploadResponse
from deepagents.backends.sandbox import BaseSandbox

from ..errors import InvalidParamsError, NotFoundError, PermissionDeniedError, SandpitError
from ..sandbox import Sandbox

METADATA = "sandpit.deepagents"


class SandpitBackend(BaseSandbox):
    """Runs a Deep Agent's commands and file operations in one Sandpit sandbox."""

    def __init__(self, sandbox: Sandbox, *, timeout: int = 300, max_output_bytes: int = 1 << 20) -> None:
        self.sandbox = sandbox
        self.timeout = timeout
        self.max_output_bytes = max_output_bytes

    @property
    def id(self) -> str:
        return self.sandbox.id

    def execute(self, command: str, *, timeout: Optional[int] = None) -> ExecuteResponse:
        # stderr into stdout at the process: one stream, in the order written.
        argv = ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh", "/bin/bash", "-c", command]
        try:
            r = self.sandbox.commands.run(argv, timeout=timeout or self.timeout)
        except SandpitError as e:
            return ExecuteResponse(output=f"Error: {e}", exit_code=None)
        out = r.stdout
        truncated = bool(r.raw.get("truncated"))
        if len(out.encode()) > self.max_output_bytes:
            out = out.encode()[: self.max_output_bytes].decode(errors="replace")
            truncated = True
        if r.timed_out:
            out += f"\n[command timed out after {timeout or self.timeout} s and was killed]"
        code = r.exit_code if not r.timed_out else 124
        return ExecuteResponse(output=out, exit_code=code, truncated=truncated)

    def upload_files(self, files: List[Tuple[str, bytes]]) -> List[FileUploadResponse]:
        out = []
        for path, data in files:
            try:
                self.sandbox.files.write(path, data)
                out.append(FileUploadResponse(path=path, error=None))
            except SandpitError as e:
                out.append(FileUploadResponse(path=path, error=_error(e)))
        return out

    def download_files(self, paths: List[str]) -> List[FileDownloadResponse]:
        out = []
        for path in paths:
            try:
                out.append(FileDownloadResponse(path=path, content=self.sandbox.files.read(path, format="bytes")))
            except SandpitError as e:
                out.append(FileDownloadResponse(path=path, content=None, error=_error(e)))
        return out


def _error(e: SandpitError) -> str:
    if e.data.get("errno") == "EISDIR" or e.data.get("type") == "dir":
        return "is_directory"
    if isinstance(e, NotFoundError):
        return "file_not_found"
    if isinstance(e, PermissionDeniedError):
        return "permission_denied"
    if isinstance(e, InvalidParamsError):
        return "invalid_path"
    return str(e)


class SandpitProvider:
    """Makes and finds Sandpit sandboxes for Deep Agents (the CLI's provider shape)."""

    def __init__(self, template: str = "default", *, policy: str = "default", limits: Optional[Dict[str, Any]] = None,
                 socket: Optional[str] = None, timeout: int = 300) -> None:
        self.template, self.policy, self.limits, self.socket, self.timeout = template, policy, limits, socket, timeout

    def get_or_create(self, *, sandbox_id: Optional[str] = None, **kwargs: Any) -> SandpitBackend:
        """The sandbox ``sandbox_id`` (``SandpitError`` not_found if it is gone), or a new one."""
        if sandbox_id:
            sb = Sandbox.connect(sandbox_id, socket=self.socket)
        else:
            sb = Sandbox.create(kwargs.get("template", self.template), policy=self.policy, limits=self.limits,
                                socket=self.socket, metadata={METADATA: "1"})
        return SandpitBackend(sb, timeout=self.timeout)

    def delete(self, *, sandbox_id: str, **kwargs: Any) -> None:
        """Deletes the sandbox; one already gone is not an error."""
        try:
            Sandbox.connect(sandbox_id, socket=self.socket).delete()
        except NotFoundError:
            pass
