"""The kernel rlimits pipevisor sets on a plugin, by the short names the pvinit
command line and ``Limits.rlimits`` use. Kept apart from the engine's limits so that
the process layer sets them without knowing how the engine derives them."""

from __future__ import annotations

import resource

RLIMIT_IDS: dict[str, int] = {
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
    "data": resource.RLIMIT_DATA,
    "as": resource.RLIMIT_AS,
}
"""Short name -> ``resource.RLIMIT_*``."""

FDS_PER_PLUGIN = 4
"""Descriptors the supervisor holds per running plugin: its stdin, stdout and stderr
pipes, and the pidfd its exit is watched with (``io/child_watch.py``)."""

PIPES_PER_PLUGIN = 3
"""The descriptors a plugin cannot do without: its pipes. Its pidfd is optional: the
child watcher stops opening pidfds when descriptors run short and watches the rest
with one shared thread."""

FD_HEADROOM = 256
"""Descriptors kept free for everything else: a spawn's child ends of the pipes (until
the fork is done), the control socket and its clients, log files, the host's own."""


def raise_nofile_for(plugins: int) -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE (never the hard one) when ``plugins`` running plugins
    would not fit under it: to the hard limit, in one step, as Go's runtime and many
    daemons do. Returns (soft, hard) when it changed, else None. A hard limit too low
    for ``plugins`` is the caller's to report (an operator raises it: ``LimitNOFILE=``
    in a systemd unit, ``ulimit -Hn`` as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = plugins * FDS_PER_PLUGIN + FD_HEADROOM
    if soft == resource.RLIM_INFINITY or soft >= needed or soft >= hard:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard, hard


def nofile_room(plugins: int) -> tuple[bool, int]:
    """Whether ``plugins`` running plugins' pipes fit under the hard RLIMIT_NOFILE (their
    pidfds are optional), and that limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return True, hard
    return plugins * PIPES_PER_PLUGIN + FD_HEADROOM <= hard, hard
