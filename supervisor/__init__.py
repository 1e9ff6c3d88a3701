"""pipevisor's supervisor: runs plugin processes and lets a host call them.

Embedding::

    from supervisor import PluginSpec, Supervisor

    async with Supervisor([PluginSpec("echo", ("pipevisor-echo",))]) as sup:
        await sup.call("echo", "echo", {"text": "hi"})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The names below load on first use, not on ``import supervisor``: the ``pipevisor`` control
# commands (status, call, ...) import ``supervisor.cli`` and need none of the engine, and
# importing all of it (anyio, jsonschema, psutil, the runner) used to be most of their
# start-up time. ``from supervisor import X`` works as before; mypy sees the real imports.
if TYPE_CHECKING:
    from supervisor.config import (
        CallPolicy,
        HealthPolicy,
        PluginMode,
        PluginSpec,
        ProtocolErrorAction,
        StartStep,
        StopPolicy,
        SupervisorConfig,
    )
    from supervisor.errors import (
        CallCancelled,
        CallError,
        CallTimeout,
        ConfigError,
        InvalidResponse,
        LocalCallError,
        MethodUnavailable,
        OverLimit,
        PipevisorError,
        PluginCrashed,
        PluginError,
        PluginUnavailable,
        QueueFull,
    )
    from supervisor.events import (
        SupervisorEvent,
    )
    from supervisor.interfaces import (
        Adapter,
        AdapterSpec,
    )
    from supervisor.limits import (
        Limit,
        LimitAction,
        Limits,
    )
    from supervisor.policy import (
        RestartMode,
        RestartPolicy,
    )
    from supervisor.states import (
        PluginState,
    )
    from supervisor.supervisor import (
        Supervisor,
    )

_HOME: dict[str, str] = {
    "CallPolicy": "supervisor.config",
    "HealthPolicy": "supervisor.config",
    "PluginMode": "supervisor.config",
    "PluginSpec": "supervisor.config",
    "ProtocolErrorAction": "supervisor.config",
    "StartStep": "supervisor.config",
    "StopPolicy": "supervisor.config",
    "SupervisorConfig": "supervisor.config",
    "CallCancelled": "supervisor.errors",
    "CallError": "supervisor.errors",
    "CallTimeout": "supervisor.errors",
    "ConfigError": "supervisor.errors",
    "InvalidResponse": "supervisor.errors",
    "LocalCallError": "supervisor.errors",
    "MethodUnavailable": "supervisor.errors",
    "OverLimit": "supervisor.errors",
    "PipevisorError": "supervisor.errors",
    "PluginCrashed": "supervisor.errors",
    "PluginError": "supervisor.errors",
    "PluginUnavailable": "supervisor.errors",
    "QueueFull": "supervisor.errors",
    "SupervisorEvent": "supervisor.events",
    "Adapter": "supervisor.interfaces",
    "AdapterSpec": "supervisor.interfaces",
    "Limit": "supervisor.limits",
    "LimitAction": "supervisor.limits",
    "Limits": "supervisor.limits",
    "RestartMode": "supervisor.policy",
    "RestartPolicy": "supervisor.policy",
    "PluginState": "supervisor.states",
    "Supervisor": "supervisor.supervisor",
}
"""Where each public name lives (the module imported when the name is first asked for)."""

__all__ = [
    "Adapter",
    "AdapterSpec",
    "CallCancelled",
    "CallError",
    "CallPolicy",
    "CallTimeout",
    "ConfigError",
    "HealthPolicy",
    "InvalidResponse",
    "Limit",
    "LimitAction",
    "Limits",
    "LocalCallError",
    "MethodUnavailable",
    "OverLimit",
    "PipevisorError",
    "PluginCrashed",
    "PluginError",
    "PluginMode",
    "PluginSpec",
    "PluginState",
    "PluginUnavailable",
    "ProtocolErrorAction",
    "QueueFull",
    "RestartMode",
    "RestartPolicy",
    "StartStep",
    "StopPolicy",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorEvent",
]

if not TYPE_CHECKING:  # hidden from mypy, so a misspelt name is an error there, not Any

    def __getattr__(name: str) -> object:
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
