"""Error codes and the error object shared by both ends of a connection.

pipevisor's own codes live in -31000..-31099, outside the JSON-RPC reserved
block (-32768..-32000), so they cannot be confused with the codes that LSP
(-32899..-32800, -32002), MCP (-32002, -32021, -32022) or a JSON-RPC library
(-32099..-32096) put there. The block is split in two halves on purpose:

* -31000..-31049 are *local*: only the supervisor produces them (the plugin
  crashed, the call timed out, ...). A plugin must never send one; the
  supervisor rewrites any it receives, so a code in this half always means
  "pipevisor said this", never "the plugin said this".
* -31050..-31099 are codes a *plugin* sends when it speaks the pipevisor
  protocol (unsupported protocol version, not initialised yet, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pipevisor.protocol import constants as _c


class ErrorCode(IntEnum):
    # JSON-RPC 2.0 standard codes.
    PARSE_ERROR = _c.PARSE_ERROR
    INVALID_REQUEST = _c.INVALID_REQUEST
    METHOD_NOT_FOUND = _c.METHOD_NOT_FOUND
    INVALID_PARAMS = _c.INVALID_PARAMS
    INTERNAL_ERROR = _c.INTERNAL_ERROR

    # Local: produced by pipevisor only.
    PLUGIN_CRASHED = -31000
    CONNECTION_CLOSED = -31001
    TIMEOUT = -31002
    CANCELLED = -31003
    OVER_LIMIT = -31004
    METHOD_UNAVAILABLE = -31005
    PLUGIN_NOT_READY = -31006
    QUEUE_FULL = -31007
    PLUGIN_STOPPED = -31008
    UNKNOWN_PLUGIN = -31009
    INVALID_RESULT = -31010
    INVALID_RESPONSE = -31011
    PROTOCOL_VIOLATION = -31012

    # Sent by plugins that speak the pipevisor protocol.
    UNSUPPORTED_PROTOCOL_VERSION = _c.UNSUPPORTED_PROTOCOL_VERSION
    NOT_INITIALIZED = _c.NOT_INITIALIZED
    SHUTTING_DOWN = _c.SHUTTING_DOWN
    REQUEST_CANCELLED = _c.REQUEST_CANCELLED


LOCAL_CODES = _c.LOCAL_CODES  # -31049 .. -31000 inclusive
PLUGIN_CODES = _c.PLUGIN_CODES  # -31099 .. -31050 inclusive

STANDARD_MESSAGES: dict[int, str] = {
    ErrorCode.PARSE_ERROR: "Parse error",
    ErrorCode.INVALID_REQUEST: "Invalid Request",
    ErrorCode.METHOD_NOT_FOUND: "Method not found",
    ErrorCode.INVALID_PARAMS: "Invalid params",
    ErrorCode.INTERNAL_ERROR: "Internal error",
}


def is_local_code(code: int) -> bool:
    """True for codes only pipevisor itself may produce."""
    return code in LOCAL_CODES


@dataclass(frozen=True, slots=True)
class ErrorObject:
    """The JSON-RPC error object: what travels in ``"error"``."""

    code: int
    message: str
    data: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out

    @property
    def is_local(self) -> bool:
        return is_local_code(self.code)


def standard_error(code: ErrorCode, data: Any = None) -> ErrorObject:
    """One of the five JSON-RPC errors with its canonical message."""
    return ErrorObject(int(code), STANDARD_MESSAGES[code], data)


def local_error(code: ErrorCode, message: str, **details: Any) -> ErrorObject:
    """An error pipevisor raises itself; ``data.origin`` says so for readers
    that only look at the payload (e.g. through the control socket)."""
    if not is_local_code(code):
        raise ValueError(f"{code!r} is not a local pipevisor code")
    return ErrorObject(int(code), message, {"origin": "pipevisor", **details})


class ProtocolError(Exception):
    """Base of the exceptions this package raises."""


class LocalProtocolError(ProtocolError):
    """Our own side tried to do something the protocol forbids (a bug in the caller)."""


class EncodeError(LocalProtocolError):
    """A value could not be encoded as JSON (not serialisable, non-string keys, ...)."""


class VersionError(ProtocolError):
    """A version string is malformed, or two version ranges do not overlap."""


class HandshakeError(ProtocolError):
    """The handshake failed; ``error`` is what to report to the other side or the user."""

    def __init__(self, error: ErrorObject) -> None:
        super().__init__(error.message)
        self.error = error
