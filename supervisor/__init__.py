"""pipevisor's supervisor: runs plugin processes and lets a host call them.

Embedding::

    from pipevisor.supervisor import PluginSpec, Supervisor

    async with Supervisor([PluginSpec("echo", ("pipevisor-echo",))]) as sup:
        await sup.call("echo", "echo", {"text": "hi"})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The names below load on first use, not on ``import pipevisor.supervisor``: the
# ``pipevisor`` control commands (status, call, ...) import ``pipevisor.supervisor.cli.main``
# and need none of the engine, and
# importing all of it (anyio, jsonschema, psutil, the runner) used to be most of their
# start-up time. ``from pipevisor.supervisor import X`` works as before; mypy sees the
# real imports.
if TYPE_CHECKING:
    from pipevisor.supervisor.engine.config import (
        CallPolicy,
        HealthPolicy,
        PluginMode,
        PluginSpec,
        ProtocolErrorAction,
        StartStep,
        StopPolicy,
        SupervisorConfig,
    )
    from pipevisor.supervisor.engine.events import (
        SupervisorEvent,
    )
    from pipevisor.supervisor.engine.interfaces import (
        Adapter,
        AdapterSpec,
    )
    from pipevisor.supervisor.engine.limits import (
        Limit,
        LimitAction,
        Limits,
    )
    from pipevisor.supervisor.engine.policy import (
        RestartMode,
        RestartPolicy,
    )
    from pipevisor.supervisor.engine.states import (
        PluginState,
    )
    from pipevisor.supervisor.engine.supervisor import (
        Supervisor,
    )
    from pipevisor.supervisor.errors import (
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

_HOME: dict[str, str] = {
    "CallPolicy": "pipevisor.supervisor.engine.config",
    "HealthPolicy": "pipevisor.supervisor.engine.config",
    "PluginMode": "pipevisor.supervisor.engine.config",
    "PluginSpec": "pipevisor.supervisor.engine.config",
    "ProtocolErrorAction": "pipevisor.supervisor.engine.config",
    "StartStep": "pipevisor.supervisor.engine.config",
    "StopPolicy": "pipevisor.supervisor.engine.config",
    "SupervisorConfig": "pipevisor.supervisor.engine.config",
    "CallCancelled": "pipevisor.supervisor.errors",
    "CallError": "pipevisor.supervisor.errors",
    "CallTimeout": "pipevisor.supervisor.errors",
    "ConfigError": "pipevisor.supervisor.errors",
    "InvalidResponse": "pipevisor.supervisor.errors",
    "LocalCallError": "pipevisor.supervisor.errors",
    "MethodUnavailable": "pipevisor.supervisor.errors",
    "OverLimit": "pipevisor.supervisor.errors",
    "PipevisorError": "pipevisor.supervisor.errors",
    "PluginCrashed": "pipevisor.supervisor.errors",
    "PluginError": "pipevisor.supervisor.errors",
    "PluginUnavailable": "pipevisor.supervisor.errors",
    "QueueFull": "pipevisor.supervisor.errors",
    "SupervisorEvent": "pipevisor.supervisor.engine.events",
    "Adapter": "pipevisor.supervisor.engine.interfaces",
    "AdapterSpec": "pipevisor.supervisor.engine.interfaces",
    "Limit": "pipevisor.supervisor.engine.limits",
    "LimitAction": "pipevisor.supervisor.engine.limits",
    "Limits": "pipevisor.supervisor.engine.limits",
    "RestartMode": "pipevisor.supervisor.engine.policy",
    "RestartPolicy": "pipevisor.supervisor.engine.policy",
    "PluginState": "pipevisor.supervisor.engine.states",
    "Supervisor": "pipevisor.supervisor.engine.supervisor",
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
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
