"""A daemon for the control-socket benchmarks: the embedded Supervisor plus the real
control server (``supervisor.control.serve_control``), in a process of its own.

Why not ``pipevisor run``: it did not exist when these cases were written; this
is the same server with N stdlib echo plugins and no config file, so the
figures are the control path's. Swap it for ``pipevisor run`` once that lands.

Usage: python perf/peers/control_daemon.py SOCKET N
Prints ``ready`` on stdout once every plugin is ready and the socket listens;
stops on SIGTERM/SIGINT or when stdin closes.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from supervisor import PluginSpec, Supervisor
from supervisor.control import serve_control
from supervisor.errors import ConfigError

STDLIB_ECHO = Path(__file__).resolve().parent / "stdlib_echo_plugin.py"


class Hooks:
    async def reload(self) -> dict[str, Any]:
        return {}

    def resolve_plugin(self, name_or_path: str) -> PluginSpec:
        raise ConfigError(f"the perf daemon loads nothing ({name_or_path!r})")

    def info(self) -> dict[str, Any]:
        return {"version": "perf"}


async def main(path: str, n: int) -> None:
    specs = [PluginSpec(f"echo{i}", (sys.executable, str(STDLIB_ECHO))) for i in range(n)]
    async with Supervisor(specs) as sup:
        await sup.wait_ready(timeout=30)
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: serve_control(sup, path, Hooks(),
                                                             task_status=task_status))
            print("ready", flush=True)

            async def stdin_closed() -> None:
                await anyio.to_thread.run_sync(sys.stdin.buffer.read)
                tg.cancel_scope.cancel()

            tg.start_soon(stdin_closed)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
