"""Exceptions the supervisor raises, mapped one-to-one onto JSON-RPC error objects.

    PipevisorError
    ├── ConfigError                 bad configuration (file, key, reason)
    └── CallError                   a call got an error answer (has .error: ErrorObject)
        ├── PluginError             the plugin itself answered with an error
        └── LocalCallError          pipevisor produced the error (code in -31049..-31000)
            ├── PluginCrashed       the plugin died while the call was in flight
            ├── CallTimeout         no answer before the deadline (or the plugin hung)
            ├── CallCancelled       the call was cancelled
            ├── QueueFull           too many calls waiting for this plugin
            ├── PluginUnavailable   not ready in time, stopped, failed or unknown
            ├── MethodUnavailable   disabled by a version mismatch
            ├── OverLimit           the plugin was stopped for exceeding a resource limit
            └── InvalidResponse     the plugin answered with something malformed

Every call ends in exactly one of: a result, or one of these. Callers that
only care about JSON-RPC can read ``exc.error.code``/``message``/``data``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipevisor.protocol import ErrorCode, ErrorObject, local_error

if TYPE_CHECKING:
    from pipevisor.protocol.interfaces import InterfaceViolation


class PipevisorError(Exception):
    """Base of everything pipevisor raises on purpose."""


class ConfigError(PipevisorError):
    """The configuration is wrong; the message names where and why."""


class CallError(PipevisorError):
    def __init__(self, error: ErrorObject) -> None:
        super().__init__(f"[{error.code}] {error.message}")
        self.error = error

    @property
    def code(self) -> int:
        return self.error.code

    @property
    def data(self) -> Any:
        return self.error.data


class PluginError(CallError):
    """An error the plugin sent."""


class LocalCallError(CallError):
    """An error pipevisor produced on the caller's behalf."""


class PluginCrashed(LocalCallError):
    pass


class CallTimeout(LocalCallError):
    pass


class CallCancelled(LocalCallError):
    pass


class QueueFull(LocalCallError):
    pass


class PluginUnavailable(LocalCallError):
    pass


class MethodUnavailable(LocalCallError):
    pass


class OverLimit(LocalCallError):
    pass


class InvalidResponse(LocalCallError):
    pass


_BY_CODE: dict[int, type[LocalCallError]] = {
    ErrorCode.PLUGIN_CRASHED: PluginCrashed,
    ErrorCode.CONNECTION_CLOSED: PluginCrashed,
    ErrorCode.TIMEOUT: CallTimeout,
    ErrorCode.CANCELLED: CallCancelled,
    ErrorCode.QUEUE_FULL: QueueFull,
    ErrorCode.PLUGIN_NOT_READY: PluginUnavailable,
    ErrorCode.PLUGIN_STOPPED: PluginUnavailable,
    ErrorCode.UNKNOWN_PLUGIN: PluginUnavailable,
    ErrorCode.METHOD_UNAVAILABLE: MethodUnavailable,
    ErrorCode.OVER_LIMIT: OverLimit,
    ErrorCode.INVALID_RESULT: InvalidResponse,
    ErrorCode.INVALID_RESPONSE: InvalidResponse,
    ErrorCode.PROTOCOL_VIOLATION: InvalidResponse,
}


def error_from_object(error: ErrorObject) -> CallError:
    """The exception for an error object: pipevisor's own (a local code and
    ``data.origin == "pipevisor"``) by code; anything else is the plugin's. A foreign
    server in raw mode may send local codes as its own: without the mark they stay its."""
    data = error.data
    if error.is_local and isinstance(data, dict) and data.get("origin") == "pipevisor":
        return _BY_CODE.get(error.code, LocalCallError)(error)
    return PluginError(error)


def local(code: ErrorCode, message: str, **details: Any) -> LocalCallError:
    exc = error_from_object(local_error(code, message, **details))
    assert isinstance(exc, LocalCallError)
    return exc


def invalid_params(what: str, exc: InterfaceViolation, **details: Any) -> CallError:
    """-32602 for params that break an interface (plugin method or host method): the
    message and ``data.path`` name the fault; the plugin never sees such params."""
    return CallError(ErrorObject(
        ErrorCode.INVALID_PARAMS,
        f"Invalid params for {what} {exc.version}: {exc.path}: {exc.message}",
        {"origin": "pipevisor", **details, **exc.to_data()}))


def unsendable_params(method: str, reason: str, **details: Any) -> CallError:
    """-32602 for params that cannot go on the wire (not JSON, not an object or an
    array, over the line limit): refused before sending, so the reason is ours to give,
    in the message where a traceback shows it."""
    return CallError(ErrorObject(
        ErrorCode.INVALID_PARAMS, f"Invalid params for {method}: {reason}",
        {"origin": "pipevisor", **details, "reason": reason}))


def sanitize_plugin_error(error: ErrorObject) -> ErrorObject:
    """A plugin may not speak with pipevisor's voice: local codes from it become -32603,
    and ``data.origin`` (which says whether pipevisor, the daemon's control socket or a
    plugin produced an error, and decides how the CLI exits) is pipevisor's own key:
    a plugin's value is moved to ``data.pluginOrigin``."""
    data = error.data
    if isinstance(data, dict) and "origin" in data:
        data = {("pluginOrigin" if k == "origin" else k): v for k, v in data.items()}
        error = ErrorObject(error.code, error.message, data)
    if not error.is_local:
        return error
    return ErrorObject(
        ErrorCode.INTERNAL_ERROR,
        f"plugin sent reserved error code {error.code}: {error.message}",
        {"origin": "plugin", "reservedCode": error.code, "data": error.data},
    )
