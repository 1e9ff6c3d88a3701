"""Where the daemon keeps its run-time files (the control socket), shared by server and clients.

One function decides the default so that ``pipevisor run`` and every client
(CLI, :class:`supervisor.client.Client`) agree without configuration.
"""

from __future__ import annotations

import os


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/pipevisor`` (per-user, tmpfs, cleaned at logout), else
    ``/tmp/pipevisor-$UID`` for sessions without one (containers, cron, su)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "pipevisor")
    return f"/tmp/pipevisor-{os.getuid()}"


def default_socket_path() -> str:
    return os.path.join(runtime_dir(), "control.sock")
