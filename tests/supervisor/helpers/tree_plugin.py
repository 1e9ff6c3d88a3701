"""Fake plugin that builds the process tree containment must not leak.

Layout: plugin -> child (same group) and plugin -> middle -> daemon, where the
middle calls setsid and exits so the daemon is an orphan in its own session
(the classic double-fork escape).  Every process records its pid as the host
sees it (via /proc/self, which keeps working inside a pid namespace), and, with
a TERMLOG argument, appends its pid there when SIGTERM arrives.

usage: tree_plugin.py PIDFILE [TERMLOG]
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


def on_term(termlog: str | None, wait_for: int = 0) -> None:
    """Log SIGTERM; with wait_for, linger until that many processes logged it.

    The plugin lingers because its exit ends the whole tree at once, and the
    test wants to see that the signal reached everyone, not who ran first.
    """

    def handler(signum: int, frame: object) -> None:
        if termlog:
            fd = os.open(termlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{host_pid()}\n".encode())
            os.close(fd)
            deadline = time.monotonic() + 5
            while wait_for and time.monotonic() < deadline:
                with open(termlog) as fh:
                    if len(fh.read().split()) >= wait_for:
                        break
                time.sleep(0.01)
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)


def sleep_forever() -> None:
    while True:
        signal.pause()


def main() -> None:
    pidfile = sys.argv[1]
    termlog = sys.argv[2] if len(sys.argv) > 2 else None
    on_term(termlog)
    ready_r, ready_w = os.pipe()

    if os.fork() == 0:  # same-group child
        os.close(ready_r)
        os.write(ready_w, f"child {host_pid()}\n".encode())
        os.close(ready_w)
        sleep_forever()

    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:  # daemon: own session, orphaned
            os.close(ready_r)
            os.write(ready_w, f"daemon {host_pid()}\n".encode())
            os.close(ready_w)
            sleep_forever()
        os._exit(0)
    os.close(ready_w)
    os.waitpid(middle, 0)
    on_term(termlog, wait_for=3)

    pids = {"plugin": host_pid()}
    with os.fdopen(ready_r) as fh:
        while len(pids) < 3:
            role, pid = fh.readline().split()
            pids[role] = int(pid)
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(pids, fh)
    os.replace(tmp, pidfile)
    sleep_forever()


if __name__ == "__main__":
    main()
