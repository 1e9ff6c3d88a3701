"""A real Supervisor in its own process, for tests that SIGKILL the supervisor.

Usage: run_supervisor.py PIDFILE. Starts the fake plugin, has it spawn a child
and a double-forked setsid grandchild (their pids go to PIDFILE), prints
"ready" and waits to be killed.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

import anyio

from pipevisor.supervisor import Supervisor
from tests.supervisor.fake import fake_spec


async def main(pidfile: str) -> None:
    async with Supervisor([fake_spec()]) as sup:
        await sup.call("fake", "spawn_tree", {"pidfile": pidfile}, timeout=20)
        runner = sup.runner("fake")
        assert runner.process is not None
        sys.stdout.write(f"ready {runner.process.pid}\n")
        sys.stdout.flush()
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
