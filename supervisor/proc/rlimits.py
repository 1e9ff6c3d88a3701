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
