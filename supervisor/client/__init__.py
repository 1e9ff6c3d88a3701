"""Clients of a running daemon's control socket, for host applications and the CLI.

``Client`` is blocking and loads nothing but the standard library, orjson and the
protocol core, so a CLI command starts fast; ``AsyncClient`` (anyio) is imported on
first use. Both give the call semantics of the embedded
:class:`pipevisor.supervisor.Supervisor`.

Import rule (tests/test_layering.py): ``pipevisor.protocol``, the base modules and
``io.control_link`` (the async client's transport, shared with the daemon). Never the
engine, proc, tools, daemon or CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipevisor.supervisor.client.blocking import Client
from pipevisor.supervisor.client.errors import (
    AccessDenied,
    BadAnswer,
    ControlError,
    DaemonBusy,
    DaemonConnectionLost,
    DaemonNotRunning,
    EventsLagged,
)
from pipevisor.supervisor.client.wire import UntrustedDaemon, resolve_socket_path

if TYPE_CHECKING:
    from pipevisor.supervisor.client.aio import AsyncClient

__all__ = [
    "AccessDenied",
    "AsyncClient",
    "BadAnswer",
    "Client",
    "ControlError",
    "DaemonBusy",
    "DaemonConnectionLost",
    "DaemonNotRunning",
    "EventsLagged",
    "UntrustedDaemon",
    "resolve_socket_path",
]


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from pipevisor.supervisor.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
