"""A stand-in daemon process for the control end-to-end tests, until they can drive
``pipevisor run``: a Supervisor with fake plugins and the real control server,
in a process of its own, stopped by SIGTERM/SIGINT.

Usage: python -m tests.daemon.standin_daemon SOCKET NAME [NAME ...]
Prints ``ready <pid>`` on stdout once the socket listens. ``load`` accepts
``extra`` (a fake plugin) or the path of an executable plugin.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from typing import Any

import anyio

from supervisor import PluginSpec, Supervisor
from supervisor.control import serve_control
from supervisor.errors import ConfigError
from tests.supervisor.fake import fake_spec


class Hooks:
    def __init__(self) -> None:
        self.reloads = 0

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"reloads": self.reloads}

    def resolve_plugin(self, name_or_path: str) -> PluginSpec:
        if name_or_path == "extra":
            return fake_spec("extra")
        if os.path.isfile(name_or_path) and os.access(name_or_path, os.X_OK):
            name = os.path.basename(name_or_path).removeprefix("pipevisor-")
            return replace(fake_spec(name), command=(name_or_path,))
        raise ConfigError(f"{name_or_path!r} is neither a known plugin nor an executable file")

    def info(self) -> dict[str, Any]:
        return {"version": "standin", "reloads": self.reloads}


async def main(path: str, names: list[str]) -> None:
    async with Supervisor([fake_spec(n) for n in names]) as sup:
        await sup.wait_ready(timeout=30)
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: serve_control(sup, path, Hooks(),
                                                             task_status=task_status))
            print(f"ready {os.getpid()}", flush=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2:])
