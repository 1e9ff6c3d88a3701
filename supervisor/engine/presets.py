"""Foreign JSON-RPC servers driven the way they expect: the MCP and LSP presets.

A preset is data (:func:`settings`: framing, cancel and ping messages, stop sequence,
a safe concurrency) plus one bring-up step (:func:`initialize`): MCP's ``initialize``
with protocol-version negotiation then ``notifications/initialized``, LSP's
``initialize`` then ``initialized``. Every value can be overridden per plugin in
``PluginSpec.server``; a plain JSON-RPC server (no preset) gets only what is set there.
docs/foreign-servers.md is the user's side of this module.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipevisor.supervisor.engine.config import Framing, PluginSpec, Preset, StartStep

MCP_VERSIONS: tuple[str, ...] = ("2025-06-18", "2025-03-26", "2024-11-05")
"""MCP protocol versions pipevisor speaks, newest first (what it uses of them, calls,
notifications, ping and cancel, is the same in all three)."""

MCP_DEFAULT_MAX_IN_FLIGHT = 1
"""MCP servers are often not safe under concurrent calls (the reference memory server
loses writes), so one call at a time unless ``server.max_in_flight`` says more."""

MCP_LOG_LEVELS = {
    "debug": 10, "info": 20, "notice": 20, "warning": 30, "error": 40,
    "critical": 50, "alert": 50, "emergency": 50,
}
"""``notifications/message`` levels (RFC 5424 names) -> Python logging levels."""

_MCP_CANCEL: tuple[str, Mapping[str, Any]] = (
    "notifications/cancelled", {"requestId": "$id", "reason": "$reason"})
_LSP_CANCEL: tuple[str, Mapping[str, Any]] = ("$/cancelRequest", {"id": "$id"})


class InitializeFailed(Exception):
    """The server's answer to ``initialize`` cannot be worked with; ``give_up``: a
    restart cannot help (an unsupported protocol version)."""

    def __init__(self, message: str, *, give_up: bool = False) -> None:
        super().__init__(message)
        self.give_up = give_up


@dataclass(frozen=True, slots=True)
class Settings:
    """What the runner and the connection do for one raw-mode plugin."""

    preset: Preset
    framing: Framing
    cancel_method: str | None
    cancel_params: Mapping[str, Any] | None
    ping_method: str | None
    stop_sequence: tuple[StartStep, ...]
    max_in_flight: int

    def cancel_message(self, ident: Any, reason: str) -> tuple[str, Any] | None:
        """(method, params) telling the server request ``ident`` is abandoned, or None
        when the server has no way to hear it."""
        if self.cancel_method is None:
            return None
        return self.cancel_method, _fill(self.cancel_params, ident, reason)

    def cancel_id(self, params: Any) -> Any:
        """The request id a cancel notification of ours names in ``params``, or None."""
        if self.cancel_params is None or not isinstance(params, dict):
            return None
        for key, value in self.cancel_params.items():
            if value == "$id":
                return params.get(key)
        return None


def _fill(template: Any, ident: Any, reason: str) -> Any:
    if template == "$id":
        return ident
    if template == "$reason":
        return reason
    if isinstance(template, Mapping):
        return {k: _fill(v, ident, reason) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [_fill(v, ident, reason) for v in template]
    return template


def settings(spec: PluginSpec) -> Settings:
    """The preset's values with the plugin's ``server`` keys over them."""
    server = spec.server
    preset = spec.preset
    framing, ping, cap = Framing.LINES, None, spec.calls.max_in_flight
    cancel: tuple[str, Mapping[str, Any] | None] | None = None
    stop: tuple[StartStep, ...] = ()
    if preset is Preset.MCP:
        cancel, ping, cap = _MCP_CANCEL, "ping", MCP_DEFAULT_MAX_IN_FLIGHT
    elif preset is Preset.LSP:
        framing, cancel = Framing.CONTENT_LENGTH, _LSP_CANCEL
        stop = (StartStep("shutdown"), StartStep("exit", notify=True))
    if server.cancel_method is not None:
        cancel = (server.cancel_method, server.cancel_params)
    return Settings(
        preset=preset,
        framing=server.framing or framing,
        cancel_method=cancel[0] if cancel else None,
        cancel_params=cancel[1] if cancel else None,
        ping_method=server.ping_method or ping,
        stop_sequence=server.stop_sequence if server.stop_sequence is not None else stop,
        max_in_flight=min(spec.calls.max_in_flight,
                          server.max_in_flight if server.max_in_flight is not None else cap),
    )


Call = Callable[[str, Any], Awaitable[Any]]
Notify = Callable[[str, Any], Awaitable[None]]


async def initialize(spec: PluginSpec, call: Call, notify: Notify, host_name: str,
                     host_version: str) -> dict[str, Any] | None:
    """The preset's bring-up; returns what status shows of the server (negotiated
    version, server info, capabilities), None for a server without preset.

    Raises:
        InitializeFailed: the answer cannot be worked with.
        CallError: the server refused ``initialize`` (the runner ends the instance).
    """
    if spec.preset is Preset.MCP:
        return await _mcp(spec, call, notify, host_name, host_version)
    if spec.preset is Preset.LSP:
        return await _lsp(spec, call, notify, host_name, host_version)
    return None


async def _mcp(spec: PluginSpec, call: Call, notify: Notify, host_name: str,
               host_version: str) -> dict[str, Any]:
    server = spec.server
    offered = server.protocol_versions or MCP_VERSIONS
    params: dict[str, Any] = {
        "protocolVersion": offered[0],
        "capabilities": dict(server.capabilities) if server.capabilities is not None
        else ({"roots": {"listChanged": False}} if "roots/list" in server.answers else {}),
        "clientInfo": {"name": host_name, "version": host_version},
        **server.initialize,
    }
    result = await call("initialize", params)
    if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
        raise InitializeFailed(f"its answer to initialize has no protocolVersion: "
                               f"{str(result)[:200]}")
    version = result["protocolVersion"]
    if version not in offered:
        raise InitializeFailed(
            f"it speaks MCP {version}, pipevisor offers {', '.join(offered)}: no common "
            "protocol version; not restarted", give_up=True)
    await notify("notifications/initialized", None)
    return {"protocolVersion": version, "serverInfo": result.get("serverInfo"),
            "capabilities": result.get("capabilities"),
            "instructions": result.get("instructions")}


async def _lsp(spec: PluginSpec, call: Call, notify: Notify, host_name: str,
               host_version: str) -> dict[str, Any]:
    server = spec.server
    root = spec.cwd or os.getcwd()
    params: dict[str, Any] = {
        "processId": os.getpid(),
        "clientInfo": {"name": host_name, "version": host_version},
        "rootUri": "file://" + os.path.abspath(root),
        "capabilities": dict(server.capabilities) if server.capabilities is not None else {},
        **server.initialize,
    }
    result = await call("initialize", params)
    if not isinstance(result, dict) or not isinstance(result.get("capabilities"), dict):
        raise InitializeFailed(f"its answer to initialize has no capabilities: "
                               f"{str(result)[:200]}")
    await notify("initialized", {})
    return {"serverInfo": result.get("serverInfo"), "capabilities": result["capabilities"]}
