"""Exceptions a handler raises to answer with a deliberate JSON-RPC error.

Kept apart from the run loop so that a plugin's helper modules can import
them without pulling in the rest of the kit.
"""

from __future__ import annotations

from pipevisor.protocol.constants import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LOCAL_CODES,
    METHOD_NOT_FOUND,
    NOT_INITIALIZED,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    SHUTTING_DOWN,
    UNSUPPORTED_PROTOCOL_VERSION,
    is_application_code,
)

TYPE_CHECKING = False  # no typing import at start-up; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

__all__ = ["LOCAL_CODES", "Cancelled", "HostCallError", "PluginError"]

_ALLOWED = frozenset((PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS,
                      INTERNAL_ERROR, UNSUPPORTED_PROTOCOL_VERSION, NOT_INITIALIZED,
                      SHUTTING_DOWN, REQUEST_CANCELLED))
"""The reserved codes SPEC 10 defines for a plugin to send."""
_warned: set[int] = set()


class PluginError(Exception):
    """Raise in a handler to answer the call with this JSON-RPC error.

    The plugin keeps running; the caller sees ``code``, ``message`` and ``data``
    exactly as given. Use (SPEC 10):

    * your own codes for application errors: any integer
      outside -32768..-30000, for example 1, 2, 3 (document them with your methods);
    * a JSON-RPC standard code where it fits, e.g. -32602 for params the
      method cannot use;
    * -31050..-31053 only with the meaning SPEC gives them.

    Codes in -31049..-31000 are refused at construction (ValueError): only
    the supervisor may send them. Any other code inside -32768..-30000 (for
    example -32000, which JSON-RPC reserves for its implementations) is
    answered as given but warned about once per code, because SPEC 10 forbids
    plugins to use it.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"PluginError code must be an int, not {type(code).__name__}")
        if code in LOCAL_CODES:
            raise ValueError(f"PluginError code {code} is in -31049..-31000, which only the "
                             "supervisor may send; use a code outside -32768..-30000 (e.g. 1)")
        if not (is_application_code(code) or code in _ALLOWED) and (
                code not in _warned and type(self) is PluginError):
            _warned.add(code)
            import warnings

            warnings.warn(f"PluginError code {code} is reserved (SPEC 10: JSON-RPC 2.0 keeps "
                          "-32768..-32000 for itself, pipevisor -31099..-30000); plugins' own "
                          "errors use codes outside -32768..-30000, e.g. 1, 2, 3",
                          FutureWarning, stacklevel=2)
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


class HostCallError(PluginError):
    """The host answered a ``ctx.call_host`` with an error (or the call timed out).

    A subclass of :class:`PluginError` so that a handler which does not catch
    it forwards the host's error to its own caller. Local codes are allowed
    here because they come from the host, not from the plugin; one that
    escapes a handler is sent on as -32603 with the original in ``data``
    (SPEC section 10: only pipevisor may speak with those codes). ``method``
    is the host method that was called.
    """

    def __init__(self, code: int, message: str, data: Any = None, *,
                 method: str | None = None) -> None:
        Exception.__init__(self, code, message, data)
        self.code = code
        self.message = message
        self.data = data
        self.method = method


class Cancelled(Exception):
    """Raised by ``ctx.check_cancelled()`` in a sync handler whose call was cancelled.

    The kit answers the call with REQUEST_CANCELLED (-31053).
    """
