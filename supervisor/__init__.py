"""pipevisor's supervisor: runs plugin processes and lets a host call them.

Embedding::

    from supervisor import PluginSpec, Supervisor

    async with Supervisor([PluginSpec("echo", ("pipevisor-echo",))]) as sup:
        await sup.call("echo", "echo", {"text": "hi"})
"""

from __future__ import annotations

from supervisor.config import (
    CallPolicy,
    HealthPolicy,
    PluginSpec,
    ProtocolErrorAction,
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
from supervisor.events import SupervisorEvent
from supervisor.policy import RestartMode, RestartPolicy
from supervisor.states import PluginState
from supervisor.supervisor import Supervisor

__all__ = [
    "CallCancelled",
    "CallError",
    "CallPolicy",
    "CallTimeout",
    "ConfigError",
    "HealthPolicy",
    "InvalidResponse",
    "LocalCallError",
    "MethodUnavailable",
    "OverLimit",
    "PipevisorError",
    "PluginCrashed",
    "PluginError",
    "PluginSpec",
    "PluginState",
    "PluginUnavailable",
    "ProtocolErrorAction",
    "QueueFull",
    "RestartMode",
    "RestartPolicy",
    "StopPolicy",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorEvent",
]
