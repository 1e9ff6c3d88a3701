"""Fake plugin whose descendants die as orphans and are never waited for.

A spawner child forks N short-lived workers and exits at once, so the workers
are orphaned; nobody in user code ever waits for them.  Only the init/subreaper
above the plugin can reap them.  Writes the workers' host pids to PIDFILE.

usage: zombie_plugin.py PIDFILE N
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def host_pid() -> int:
    try:
        return int(os.readlink("/proc/self"))
    except OSError:
        return os.getpid()


def main() -> None:
    pidfile, count = sys.argv[1], int(sys.argv[2])
    read_end, write_end = os.pipe()
    spawner = os.fork()
    if spawner == 0:
        os.close(read_end)
        for _ in range(count):
            if os.fork() == 0:
                os.write(write_end, f"{host_pid()}\n".encode())
                time.sleep(0.2)
                os._exit(0)
        os._exit(0)
    os.close(write_end)
    os.waitpid(spawner, 0)
    with os.fdopen(read_end) as fh:
        workers = [int(line) for line in fh]
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"plugin": host_pid(), "workers": workers}, fh)
    os.replace(tmp, pidfile)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
