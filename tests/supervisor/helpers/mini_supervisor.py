"""Minimal supervisor: spawns one plugin the way pipevisor does, then blocks.

Tests SIGKILL this process and check what survives.  Writes
{"supervisor", "spawned", "mechanism"} to INFO once the plugin is started.

usage: mini_supervisor.py INFO MODE RECORD -- PLUGIN ARGV...
  MODE: auto | pidns | session (PIPEVISOR_SHIM=0 in the env gives no shim)
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
)

import anyio

from pipevisor.supervisor.proc import containment as _platform


def write_info(path: str, data: dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


async def main(info: str, mode: str, record: str, plugin: list[str]) -> None:
    containment = _platform.detect_containment(force=mode)
    _platform.become_subreaper()
    leftovers = _platform.LeftoverRecord(record)
    leftovers.cleanup()
    argv, kwargs = _platform.wrap_command(plugin, containment)
    process = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None, **kwargs)
    leftovers.record(process.pid)
    write_info(
        info,
        {"supervisor": os.getpid(), "spawned": process.pid, "mechanism": containment.mechanism},
    )
    await process.wait()
    await anyio.sleep_forever()


if __name__ == "__main__":
    sep = sys.argv.index("--")
    info_path, mode_arg, record_path = sys.argv[1:sep]
    anyio.run(main, info_path, mode_arg, record_path, sys.argv[sep + 1 :])
