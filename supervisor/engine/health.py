"""When liveness pings go out, the one task that sends them, and how their answers and
their deadlines are heard without a task each.

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

A ping awaited by a task of its own still costs that task, a future and a loop timer
for its deadline (about 120-150 us of host CPU a ping at 5,000 idle plugins, issue
#20). So where the connection can hand an answer to a callback
(:meth:`Connection.request_nowait`), the ticker sends the ping, the answer is heard in
the connection's reader (:class:`ConnectionPings`), and the deadline is one more entry
in the ticker's heap, checked in the slot it falls in: a hang is seen at most one slot
after ``ping_timeout``. Only a connection without that path (the portable anyio one)
has its pings awaited by a task, as before.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from pipevisor.protocol import ErrorObject, ErrorResponse, RequestId, Response
from pipevisor.supervisor.errors import CallTimeout, PluginCrashed, error_from_object

__all__ = ["SLOT", "ConnectionPings", "HealthTicker", "Heard", "Sent", "Watch",
           "first_ping_delay", "hear", "held_by_throttle"]

log = logging.getLogger("pipevisor.health")

SLOT = 1.0
"""Seconds: pings due within one slot go out together (the default of
:class:`HealthTicker`). A tenth of a second woke the daemon ten times a second with 5,000
plugins, and each wake's answers came back spread over several loop wake-ups: 2.4-2.5 %
of a core at rest, against 1.8 % with one slot a second (issue #20; probes elsewhere are
set in whole seconds too). The price: a ping up to a second late, a hang seen up to a
second after ``ping_timeout``; intervals under ten slots are not batched at all."""


def first_ping_delay(interval: float, draw: float) -> float:
    """The wait before an instance's first ping: ``draw`` (uniform in [0, 1)) placed in
    the second half of ``interval``."""
    return interval * (0.5 + 0.5 * draw)


def due_time(at: float, interval: float, slot: float = SLOT) -> float:
    """When a ping meant for ``at`` goes out (or its deadline is checked): the end of its
    slot, when the interval is long enough for a slot's delay not to matter (ten slots
    or more)."""
    if interval < 10 * slot:
        return at
    return math.ceil(at / slot) * slot


def held_by_throttle(sent: float, paused_since: float | None, resumed_at: float) -> bool:
    """Whether a ping sent at ``sent`` (monotonic) went unanswered because the CPU
    throttle paused the plugin meanwhile (it is paused now, or was resumed since): a
    plugin the supervisor itself stopped did not hang."""
    return paused_since is not None or resumed_at >= sent


class Heard(enum.Enum):
    """What one answer to a ping says about the plugin."""

    ALIVE = "alive"
    """It answered (an error too: any answer proves it reads and writes)."""
    GONE = "gone"
    """It died or its connection closed with the ping in flight: the exit is reported by
    whoever watches the process, the pings just stop."""
    TIMED_OUT = "timed out"
    """Its connection was closed with a timeout (an ending that saw it hang): judged like
    a ping of our own that went unanswered."""


def hear(answer: Response | ErrorResponse, local: bool) -> Heard:
    """Judge an answer the way an awaited ping judges what ``Connection.call`` returns or
    raises, so that a ping heard in a callback and one awaited by a task cannot disagree.
    Only an answer made up on this side (``local``) can say anything but alive: a
    plugin's own errors never carry pipevisor's codes (they are sanitised)."""
    if not local or not isinstance(answer, ErrorResponse):
        return Heard.ALIVE
    exc = error_from_object(answer.error)
    if isinstance(exc, CallTimeout):
        return Heard.TIMED_OUT
    if isinstance(exc, PluginCrashed):
        return Heard.GONE
    return Heard.ALIVE


Ping = Callable[[], Awaitable[bool]]
"""Sends one ping and waits for its answer; False: stop pinging (the instance ended)."""

Answered = Callable[[bool], None]
"""Told once per ping sent with :meth:`Pinger.send`: True to ping again, False to stop."""


class Sent(enum.Enum):
    """What :meth:`Pinger.send` did."""

    SENT = "sent"
    """A ping went out: its answer comes to the ``answered`` callback, or the ticker calls
    :meth:`Pinger.overdue` once ``timeout`` has passed."""
    AWAIT = "await"
    """Nothing went out and the instance lives on: no callback path (the portable anyio
    connection), so the ticker awaits the ping in a task instead."""
    STOP = "stop"
    """The instance needs no more pings (its connection closed, it was replaced)."""


class Pinger(Protocol):
    """Pings that cost no task: sent from the ticker, heard in a callback."""

    @property
    def timeout(self) -> float:
        """Seconds an answer may take."""
        ...

    def send(self, answered: Answered) -> Sent:
        """Send one ping; its answer goes to ``answered`` (once, never from within
        ``send`` itself)."""
        ...

    def overdue(self) -> bool:
        """The ping sent last is unanswered after ``timeout``: give up on it and judge.
        True to ping again (it was not a hang)."""
        ...


class Watch:
    """One instance's place in the ticker; :meth:`cancel` when the instance ends.

    A watch has at most one live entry in the ticker's heap, the one carrying its
    current ``ticket``: the time of its next ping, or, while a ping is ``in_flight``,
    that ping's deadline. An answer pushes the next ping and so makes the deadline's
    entry stale; stale entries are dropped where they surface, never searched for."""

    __slots__ = ("_ticker", "cancelled", "in_flight", "interval", "ping", "pinger", "sent",
                 "ticket")

    def __init__(self, ticker: HealthTicker, interval: float, ping: Ping,
                 pinger: Pinger | None) -> None:
        self._ticker = ticker
        self.interval = interval
        self.ping = ping
        """The awaited ping: the only one without a ``pinger``, the fallback with one."""
        self.pinger = pinger
        self.cancelled = False
        self.in_flight = False
        """A ping from ``pinger`` is out and unanswered; its deadline is in the heap."""
        self.sent = 0.0
        """Ticker time the last ping went out (the next is due ``interval`` after it)."""
        self.ticket = 0

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._ticker._live -= 1

    def answered(self, again: bool) -> None:
        """The ping in flight was answered (``again``: keep pinging). An answer for a ping
        already given up on, or after :meth:`cancel`, changes nothing."""
        if self.cancelled or not self.in_flight:
            return
        self.in_flight = False
        if again:
            self._ticker._push(self.sent + self.interval, self)
        else:
            self.cancel()


class HealthTicker:
    """Sends every watched instance's pings, batched by slot, and checks the deadlines of
    those heard in callbacks (see the module docstring)."""

    def __init__(self, slot: float = SLOT) -> None:
        self.slot = slot
        """Seconds: pings (and deadlines) due within one slot are handled together."""
        self._heap: list[tuple[float, int, Watch, int]] = []
        """(due, order, watch, ticket): live only while ``ticket`` is the watch's own."""
        self._order = itertools.count()
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._live = 0

    @property
    def watched(self) -> int:
        """Watches not cancelled (nor finished)."""
        return self._live

    def watch(self, interval: float, ping: Ping, first: float,
              pinger: Pinger | None = None) -> Watch:
        """Ping every ``interval`` seconds, the first time in ``first`` seconds: through
        ``pinger`` when given (no task a ping), else by awaiting ``ping``."""
        entry = Watch(self, interval, ping, pinger)
        self._live += 1
        self._push(anyio.current_time() + first, entry)
        return entry

    def _push(self, at: float, entry: Watch) -> None:
        """Make ``at`` the watch's one live entry (the entry it had goes stale)."""
        due = due_time(at, entry.interval, self.slot)
        earliest = self._heap[0][0] if self._heap else math.inf
        entry.ticket += 1
        heapq.heappush(self._heap, (due, next(self._order), entry, entry.ticket))
        if due < earliest:
            self._changed.set()

    async def run(self) -> None:
        """Runs until cancelled (the supervisor's exit)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            heap = self._heap
            while True:
                now = anyio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, entry, ticket = heapq.heappop(heap)
                    if entry.cancelled or ticket != entry.ticket:
                        continue  # stale: answered in time, or the instance ended
                    if entry.in_flight:
                        self._overdue(entry)
                    else:
                        self._send(entry, now, tg)
                while heap and (heap[0][2].cancelled or heap[0][3] != heap[0][2].ticket):
                    heapq.heappop(heap)  # no wake-up for a deadline met long ago
                if len(heap) > 2 * self._live + 64:
                    self._compact()
                self._changed = anyio.Event()
                with anyio.move_on_after(heap[0][0] - now if heap else math.inf):
                    await self._changed.wait()

    def _compact(self) -> None:
        """Drop every stale entry at once. A watch leaves one stale deadline a ping, popped
        when it falls due, so the heap stays within two entries a watch, unless
        ``ping_timeout`` is many intervals long or many watches were cancelled at once:
        then this keeps it within bounds, at a cost spread over as many answers."""
        self._heap[:] = [e for e in self._heap if not e[2].cancelled and e[3] == e[2].ticket]
        heapq.heapify(self._heap)

    def _send(self, entry: Watch, now: float, tg: TaskGroup) -> None:
        pinger = entry.pinger
        if pinger is not None:
            entry.in_flight = True  # before send: the answer must find it in flight
            entry.sent = now
            try:
                sent = pinger.send(entry.answered)
            except Exception:  # the pinger's own guard failed: never take the ticker down
                log.exception("a liveness ping failed; that plugin is no longer pinged")
                entry.cancel()
                return
            if sent is Sent.SENT:
                if entry.in_flight and not entry.cancelled:
                    self._push(now + pinger.timeout, entry)
                return
            entry.in_flight = False
            if sent is Sent.STOP:
                entry.cancel()
                return
        tg.start_soon(self._one, entry, now)

    def _overdue(self, entry: Watch) -> None:
        pinger = entry.pinger
        assert pinger is not None  # only a pinger's pings are in flight
        entry.in_flight = False
        try:
            again = pinger.overdue()
        except Exception:  # as in _send
            log.exception("a liveness ping failed; that plugin is no longer pinged")
            again = False
        if again and not entry.cancelled:
            self._push(entry.sent + entry.interval, entry)
        else:
            entry.cancel()

    async def _one(self, entry: Watch, sent: float) -> None:
        try:
            again = await entry.ping()
        except Exception:  # the ping's own guard failed: never take the ticker down
            log.exception("a liveness ping failed; that plugin is no longer pinged")
            entry.cancel()
            return
        if again and not entry.cancelled:
            self._push(sent + entry.interval, entry)
        else:
            entry.cancel()


class PingLink(Protocol):
    """What :class:`ConnectionPings` needs of a connection (engine/connection.py)."""

    @property
    def closed_error(self) -> ErrorObject | None: ...

    def request_nowait(self, method: str, params: Any,
                       done: Callable[[Response | ErrorResponse, bool], None]
                       ) -> RequestId | None: ...

    def forget(self, ident: RequestId, reason: str) -> bool: ...


class ConnectionPings:
    """One instance's pings over its connection, as a :class:`Pinger`: sent with
    ``request_nowait``, heard where the reader settles them, given up on with ``forget``
    (the plugin hears a cancel, as after an awaited ping's timeout).

    What an answer or a missing one means for the instance is the runner's (``current``,
    ``unanswered``, ``fault``), shared with its awaited ping, so both paths say the same.
    """

    __slots__ = ("_answered", "_conn", "_current", "_fault", "_ident", "_method", "_params",
                 "_sent", "_unanswered", "timeout")

    def __init__(self, conn: PingLink, method: str, params: Any, timeout: float, *,
                 current: Callable[[], bool], unanswered: Callable[[float], bool],
                 fault: Callable[[Exception], None]) -> None:
        """``current()``: the connection still serves this instance; ``unanswered(sent)``:
        a ping sent at monotonic ``sent`` got no answer in time, True to ping on;
        ``fault(exc)``: a bug of ours while pinging (the instance ends)."""
        self._conn = conn
        self._method = method
        self._params = params
        self.timeout = timeout
        self._current = current
        self._unanswered = unanswered
        self._fault = fault
        self._ident: RequestId | None = None
        self._sent = 0.0
        self._answered: Answered | None = None

    def send(self, answered: Answered) -> Sent:
        try:
            if not self._current() or self._conn.closed_error is not None:
                return Sent.STOP
            self._answered = answered
            self._sent = time.monotonic()  # the throttle's clock (sampler.py)
            self._ident = self._conn.request_nowait(self._method, self._params, self._done)
        except Exception as exc:  # our bug: this instance's, like any other
            self._fault(exc)
            return Sent.STOP
        return Sent.AWAIT if self._ident is None else Sent.SENT

    def _done(self, answer: Response | ErrorResponse, local: bool) -> None:
        """In the connection's reader: the answer, or the local error of a dead plugin."""
        self._ident = None
        answered = self._answered
        assert answered is not None
        try:
            heard = hear(answer, local)
            again = heard is Heard.ALIVE or (heard is Heard.TIMED_OUT
                                             and self._unanswered(self._sent))
        except Exception as exc:  # as in send
            self._fault(exc)
            again = False
        answered(again)

    def overdue(self) -> bool:
        ident, self._ident = self._ident, None
        try:
            if ident is not None and not self._conn.forget(ident, "timeout"):
                return True  # answered after all (the answer has rescheduled it)
            return self._unanswered(self._sent)
        except Exception as exc:  # as in send
            self._fault(exc)
            return False
