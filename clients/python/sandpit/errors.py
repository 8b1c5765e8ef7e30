"""Typed errors: one class per stable error code of the Sandpit protocol (``error.data.code``)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Type


class SandpitError(Exception):
    """An error answered by the daemon (or a lost connection).

    ``code`` is the stable string to switch on (``"not_found"``), ``rpc_code`` the JSON-RPC number
    (-32004), ``data`` everything else the daemon said (``field`` for invalid params, ``state``...).
    """

    code: str = "internal"

    def __init__(self, message: str, *, code: Optional[str] = None, rpc_code: Optional[int] = None,
                 data: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.rpc_code = rpc_code
        self.data: Dict[str, Any] = data or {}

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class ParseError(SandpitError): code = "parse_error"
class InvalidRequestError(SandpitError): code = "invalid_request"
class RequestTooLargeError(SandpitError): code = "request_too_large"
class MethodNotFoundError(SandpitError): code = "method_not_found"
class InvalidParamsError(SandpitError):
    """A missing, wrongly typed or unknown parameter; ``field`` names it."""
    code = "invalid_params"

    @property
    def field(self) -> Optional[str]:
        return self.data.get("field")
class InternalError(SandpitError): code = "internal"
class NotFoundError(SandpitError): code = "not_found"
class ConflictError(SandpitError): code = "conflict"
class InvalidStateError(SandpitError): code = "invalid_state"
class LimitExceededError(SandpitError): code = "limit_exceeded"
class SandpitTimeoutError(SandpitError): code = "timeout"
class BusyError(SandpitError): code = "busy"
class UnavailableError(SandpitError): code = "unavailable"
class PermissionDeniedError(SandpitError): code = "permission_denied"
class SandboxFailedError(SandpitError): code = "sandbox_failed"
class BuildFailedError(SandpitError): code = "build_failed"
class CheckpointCorruptError(SandpitError):
    """A restore or fork of a checkpoint whose image no longer matches its checksum (nothing was changed)."""
    code = "checkpoint_corrupt"


class ConnectionClosedError(UnavailableError):
    """The daemon closed the connection (or exited) before answering."""


_BY_CODE: Dict[str, Type[SandpitError]] = {
    c.code: c for c in (ParseError, InvalidRequestError, RequestTooLargeError, MethodNotFoundError, InvalidParamsError,
                        InternalError, NotFoundError, ConflictError, InvalidStateError, LimitExceededError,
                        SandpitTimeoutError, BusyError, UnavailableError, PermissionDeniedError, SandboxFailedError,
                        BuildFailedError, CheckpointCorruptError)
}


def error_from_wire(error: Dict[str, Any]) -> SandpitError:
    """The exception for a JSON-RPC ``error`` object."""
    data = dict(error.get("data") or {})
    code = data.pop("code", None) or "internal"
    cls = _BY_CODE.get(code, SandpitError)
    return cls(str(error.get("message", "error")), code=code, rpc_code=error.get("code"), data=data)
