"""Per-plugin resource limits: what may be used, and what happens past it.

Every limit defaults to "no limit" (``None``): a plugin without limits costs the
sampler nothing. The sampler (``supervisor/engine/sampler.py``) measures the whole
process tree; the kernel rlimits derived here (``Limits.rlimits``) are only a
backstop for what grows faster than one sampling interval. See docs/limits.md.
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass, replace
from enum import StrEnum

from pipevisor.supervisor.errors import ConfigError


class LimitAction(StrEnum):
    WARN = "warn"
    """Log and publish a "limit" event; the plugin keeps running."""
    THROTTLE = "throttle"
    """CPU only: pause and resume the tree so it averages at most its share."""
    RESTART = "restart"
    """End the instance; the restart policy decides whether and when it starts again."""
    STOP = "stop"
    """End the instance and leave the plugin stopped."""


class MemoryBackstop(StrEnum):
    """Which kernel rlimit backs the memory limit up (per process, set before exec)."""

    DATA = "data"
    """RLIMIT_DATA: private writable memory (heap, anonymous mmap). Reservations made
    with PROT_NONE, as Go, the JVM and V8 do, are not counted, so those runtimes work."""
    AS = "as"
    """RLIMIT_AS: the whole address space, reservations included; breaks Go/Java/Node."""
    NONE = "none"
    """No memory rlimit: sampling alone."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One ceiling and what to do when it is passed."""

    max: float
    """An int for memory, fds and processes and a float for cpu once it is part of
    :class:`Limits`, which normalises it (so events, status and logs print ``104857600``,
    not ``104857600.0``, whatever the configuration file or caller wrote)."""
    action: LimitAction = LimitAction.STOP

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "action", LimitAction(self.action))
        except ValueError:
            raise ConfigError(f"limit action must be one of {[a.value for a in LimitAction]}, "
                              f"not {self.action!r}") from None
        if (not isinstance(self.max, (int, float)) or isinstance(self.max, bool)
                or not math.isfinite(self.max) or self.max <= 0):
            raise ConfigError(f"limit max must be a positive number, not {self.max!r} "
                              "(leave the limit out for none)")


@dataclass(frozen=True, slots=True)
class Limits:
    """A plugin's limits; ``None`` everywhere (the default) means none at all."""

    memory: Limit | None = None
    """Resident memory (RSS) of the whole tree, in bytes. Acts on the first sample over it."""
    cpu: Limit | None = None
    """Percent of one core used by the whole tree (200 = two full cores), averaged over
    ``cpu_window`` seconds so that short bursts are allowed."""
    cpu_window: float = 10.0
    fds: Limit | None = None
    """Open file descriptors summed over the tree."""
    processes: Limit | None = None
    """Processes plus threads in the tree (each thread counts once, the shim included)."""
    memory_backstop: MemoryBackstop = MemoryBackstop.DATA
    backstop_factor: float = 2.0
    """Kernel rlimits are set at this multiple of the sampled limit (per process), so the
    sampler acts first in the normal case and the kernel only catches runaways."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "memory_backstop", MemoryBackstop(self.memory_backstop))
        except ValueError:
            raise ConfigError(f"memory_backstop must be one of "
                              f"{[b.value for b in MemoryBackstop]}, "
                              f"not {self.memory_backstop!r}") from None
        if self.cpu_window <= 0:
            raise ConfigError("limits: cpu_window must be positive")
        if self.backstop_factor < 1:
            raise ConfigError("limits: backstop_factor must be at least 1")
        for name in ("memory", "fds", "processes"):
            limit = getattr(self, name)
            if limit is None:
                continue
            if limit.action is LimitAction.THROTTLE:
                raise ConfigError(f"limits: {name} cannot be throttled (only cpu can); "
                                  "use warn, restart or stop")
            if type(limit.max) is not int:
                # bytes and counts are measured as whole numbers, so dropping the fraction
                # of the maximum changes no comparison (n <= 10.5 exactly when n <= 10)
                whole = int(limit.max)
                if whole < 1:
                    raise ConfigError(f"limits: {name} max must be at least 1, "
                                      f"not {limit.max!r}")
                object.__setattr__(self, name, replace(limit, max=whole))
        if self.cpu is not None and type(self.cpu.max) is not float:
            object.__setattr__(self, "cpu", replace(self.cpu, max=float(self.cpu.max)))

    @property
    def any(self) -> bool:
        """Whether the sampler has anything to watch."""
        return (self.memory is not None or self.cpu is not None or self.fds is not None
                or self.processes is not None)

    def rlimits(self) -> dict[str, int]:
        """Kernel limits to set in the child before exec, by short name (core, nofile,
        data, as). RLIMIT_CORE is always 0: a crashing plugin must not fill the disk with
        a core of its (possibly huge) heap or leak secrets into one."""
        out = {"core": 0}
        if self.fds is not None:
            out["nofile"] = max(16, int(self.fds.max * self.backstop_factor))
        if self.memory is not None and self.memory_backstop is not MemoryBackstop.NONE:
            out[self.memory_backstop.value] = int(self.memory.max * self.backstop_factor)
        return out


NO_LIMITS = Limits()



_OUT_OF_MEMORY = re.compile(
    r"MemoryError|Cannot allocate memory|out of memory|bad_alloc|ENOMEM"
    r"|memory allocation of \d+ bytes failed|failed to allocate|allocation failed"
    r"|OutOfMemoryError",
    re.IGNORECASE)
"""What runtimes print when an allocation fails: CPython, glibc/strerror, Go
('runtime: out of memory'), Node ('JavaScript heap out of memory'), C++, Rust, Java."""

_KILLED_HARD = (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV, -signal.SIGBUS)


def backstop_evidence(limits: Limits, returncode: int | None, stderr_tail: list[str],
                      last_rss: int | None) -> str | None:
    """Why an unexpected exit looks like the kernel memory backstop at work, or None.

    The kernel does not say that an allocation failed because of RLIMIT_DATA/AS: the
    plugin just sees ENOMEM and usually dies. Attributed to the memory limit only on
    evidence: its stderr tail says it ran out of memory, or it died by a hard signal
    while the last sample was within 10 % of the limit. A plugin that catches the
    failure and exits quietly, or whose tail says nothing, stays a plain crash.
    """
    memory = limits.memory
    if memory is None or limits.memory_backstop is MemoryBackstop.NONE:
        return None
    if returncode is None or returncode == 0:
        return None
    for line in reversed(stderr_tail):
        if _OUT_OF_MEMORY.search(line):
            return f"its stderr says {line.strip()[:160]!r}"
    if last_rss is not None and last_rss >= 0.9 * memory.max and returncode in _KILLED_HARD:
        return (f"killed by signal {-returncode} with {last_rss} bytes resident at the "
                f"last sample (limit {memory.max})")
    return None
