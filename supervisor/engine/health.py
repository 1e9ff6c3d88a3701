"""When liveness pings go out, and the one task that sends them.

Plugins started together (a daemon start, a reload, a host loading hundreds at once)
become ready within a few seconds of each other; pinging each one exactly
``ping_interval`` after it became ready would send all their pings in the same few
seconds, every interval: a burst that shows up as a latency spike for real calls
(issue #20 measured 50-90 ms at 1,000 plugins). Drawing each instance's first ping
uniformly from the second half of the interval spreads the pings over half of it for
good, since every later ping keeps the phase; no plugin is pinged later than before.

The opposite cost is waking up for every ping: an idle host that sends 500 pings a
second one by one pays a loop wake-up (and on a VM, an idle CPU's wake-up) for each,
about 200 us of CPU a ping on the 2-core reference VM. :class:`HealthTicker` wakes
once per slot (``SLOT`` seconds) and sends every ping due in it together, so the
answers come back together too: one task, one timer, whatever the number of plugins.
A ping is at most one slot late; plugins pinged more often than ten times a slot's
length are pinged on time, unbatched.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

__all__ = ["SLOT", "HealthTicker", "Watch", "first_ping_delay"]

log = logging.getLogger("pipevisor.health")

SLOT = 0.1
"""Seconds: pings due within one slot go out together."""


def first_ping_delay(interval: float, draw: float) -> float:
    """The wait before an instance's first ping: ``draw`` (uniform in [0, 1)) placed in
    the second half of ``interval``."""
    return interval * (0.5 + 0.5 * draw)


def due_time(at: float, interval: float, slot: float = SLOT) -> float:
    """When a ping meant for ``at`` goes out: the end of its slot, when the interval is
    long enough for a slot's delay not to matter (ten slots or more)."""
    if interval < 10 * slot:
        return at
    return math.ceil(at / slot) * slot


Ping = Callable[[], Awaitable[bool]]
"""Sends one ping and waits for its answer; False: stop pinging (the instance ended)."""


class Watch:
    """One instance's place in the ticker; :meth:`cancel` when the instance ends."""

    __slots__ = ("cancelled", "interval", "ping")

    def __init__(self, interval: float, ping: Ping) -> None:
        self.interval = interval
        self.ping = ping
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class HealthTicker:
    """Sends every watched instance's pings, batched by slot (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None

    @property
    def watched(self) -> int:
        return len(self._heap)

    def watch(self, interval: float, ping: Ping, first: float) -> Watch:
        """Ping every ``interval`` seconds, the first time in ``first`` seconds."""
        entry = Watch(interval, ping)
        self._push(anyio.current_time() + first, entry)
        return entry

    def _push(self, at: float, entry: Watch) -> None:
        due = due_time(at, entry.interval)
        earliest = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (due, next(self._order), entry))
        if due < earliest:
            self._changed.set()

    async def run(self) -> None:
        """Runs until cancelled (the supervisor's exit)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            heap = self._heap
            while True:
                while heap and heap[0][2].cancelled:
                    heapq.heappop(heap)
                now = anyio.current_time()
                if not heap or heap[0][0] > now:
                    self._changed = anyio.Event()
                    with anyio.move_on_after(heap[0][0] - now if heap else math.inf):
                        await self._changed.wait()
                    continue
                while heap and heap[0][0] <= now:
                    _, _, entry = heapq.heappop(heap)
                    if not entry.cancelled:
                        tg.start_soon(self._one, entry, now)

    async def _one(self, entry: Watch, sent: float) -> None:
        try:
            again = await entry.ping()
        except Exception:  # the ping's own guard failed: never take the ticker down
            log.exception("a liveness ping failed; that plugin is no longer pinged")
            return
        if again and not entry.cancelled:
            self._push(sent + entry.interval, entry)
