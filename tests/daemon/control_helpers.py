"""A control server around a real Supervisor, for the control socket and client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from pipevisor.supervisor import PluginSpec, Supervisor
from pipevisor.supervisor.daemon.control import MAX_IN_FLIGHT, serve_control
from pipevisor.supervisor.errors import ConfigError


@dataclass
class FakeHooks:
    """DaemonHooks without a daemon: loadable specs by name, counted reloads."""

    loadable: dict[str, PluginSpec] = field(default_factory=dict)
    reloads: int = 0

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"reloaded": True, "count": self.reloads}

    async def preview(self) -> dict[str, Any]:
        return {"dry_run": True, "count": self.reloads}

    def resolve_plugin(self, name_or_path: str) -> PluginSpec:
        try:
            return self.loadable[name_or_path]
        except KeyError:
            raise ConfigError(f"no plugin {name_or_path!r} is configured or discovered") from None

    def info(self) -> dict[str, Any]:
        return {"version": "test"}


@asynccontextmanager
async def running(specs: list[PluginSpec], path: str, hooks: FakeHooks | None = None, *,
                  max_in_flight: int = MAX_IN_FLIGHT,
                  max_connections: int = 128) -> AsyncIterator[Supervisor]:
    async with Supervisor(specs) as sup, anyio.create_task_group() as tg:
        await sup.wait_ready(timeout=20)
        await tg.start(lambda task_status: serve_control(
            sup, path, hooks or FakeHooks(), max_in_flight=max_in_flight,
            max_connections=max_connections, task_status=task_status))
        try:
            yield sup
        finally:
            tg.cancel_scope.cancel()


async def wait_for(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a cheap in-process condition until it holds, failing after ``timeout``."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)
