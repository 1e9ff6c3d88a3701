"""Exceptions a handler raises to answer with a deliberate JSON-RPC error.

Kept apart from the run loop so that a plugin's helper modules can import
them without pulling in the rest of the kit.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at start-up; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

LOCAL_CODES = range(-31049, -30999)  # only the supervisor may send these (SPEC section 10)


class PluginError(Exception):
    """Raise in a handler to answer the call with this JSON-RPC error.

    The plugin keeps running; the caller sees ``code``, ``message`` and ``data``
    exactly as given. Codes in -31049..-31000 are refused at construction
    because the supervisor reserves them to mean "pipevisor said this".
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"PluginError code must be an int, not {type(code).__name__}")
        if code in LOCAL_CODES:
            raise ValueError(f"PluginError code {code} is in -31049..-31000, which only the "
                             "supervisor may send; use -32000..-32099 or your own range")
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
