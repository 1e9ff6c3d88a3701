"""State changes and incidents, published to whoever follows them (CLI, control socket, tests).

Publishing never blocks the supervisor: each subscriber has a queue bounded in
events *and* in bytes (an event's size is estimated once, from the lengths of
its strings; see :func:`event_size`), so a subscriber that stops reading holds
at most its budget, however large the events are. What happens past the
budget depends on who subscribed:

* an embedded subscriber (``async with sup.subscribe() as events``, the host's
  own code) loses the *oldest* events and is told how many in
  :attr:`Subscription.dropped`; it keeps receiving the newest ones;
* a subscriber given ``on_lag`` (the control socket's remote subscribers) is
  *ended*, as tokio's broadcast channel does with a lagging receiver: its queue
  is freed at once, ``on_lag(dropped)`` is called so its owner can send a final
  "lagged, N events dropped" notice and disconnect, and :meth:`Subscription.next`
  raises :class:`SubscriptionLagged` once what was queued before is read.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
import orjson

log = logging.getLogger("pipevisor.events")

DEFAULT_MAXLEN = 10_000
"""Events an embedded subscriber may have queued (``Supervisor.subscribe(maxlen=)``)."""

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""Estimated bytes an embedded subscriber may have queued: one event as large as a
plugin may send (the 16 MiB line limit) always fits, 10,000 stderr lines of 64 KiB
do not (the oldest go first)."""

EVENT_OVERHEAD = 100
"""Bytes counted per event on top of its strings (the object, its dict, the time)."""


class EventKind(StrEnum):
    """Every kind of event the engine publishes (docs/cli.md lists them for users; a
    test keeps the two in step). A StrEnum: it compares equal to its string, so
    ``event.kind == "exit"`` and JSON output are unchanged."""

    STATE = "state"
    """The plugin moved between states: detail ``from``, ``to``, ``reason``."""
    EXIT = "exit"
    """An instance ended: exit code or signal, the reason, its last stderr lines."""
    RESTART = "restart"
    """A restart was scheduled: the attempt and the backoff delay."""
    FAULT = "fault"
    """The plugin broke the protocol, or serving it raised (``kind``: what happened)."""
    LIMIT = "limit"
    """A resource limit was passed: ``limit``, ``value``, ``max``, ``action``."""
    LOG = "log"
    """A ``pipevisor/log`` message from the plugin."""
    STDERR = "stderr"
    """One line of the plugin's stderr (only to subscribers that ask for it)."""
    PROGRESS = "progress"
    """A ``pipevisor/progress`` notification for a call in flight."""
    NOTIFICATION = "notification"
    """Any other notification the plugin sent."""
    INTERFACE = "interface"
    """Interface negotiation at start: methods disabled or adapted, and why."""
    INVALID_RESULT = "invalid_result"
    """A result that failed its interface's result schema."""
    RAW = "raw"
    """The plugin did not speak the handshake and runs in raw mode."""


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    plugin: str
    kind: EventKind
    """What happened; a plain string that names a kind is accepted and converted, one
    that does not raises ValueError (a typo in a publisher fails its test)."""
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if type(self.kind) is not EventKind:
            object.__setattr__(self, "kind", EventKind(self.kind))

    def to_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "kind": self.kind, "time": self.time, **self.detail}


def event_size(event: SupervisorEvent) -> int:
    """What queueing ``event`` costs, estimated cheaply: the lengths of its strings plus a
    fixed overhead. Flat details (strings, numbers: state changes, stderr lines, faults)
    cost one pass over the keys; a nested value (a notification's params) is measured
    by encoding it once, which costs about what decoding its line already cost."""
    size = EVENT_OVERHEAD + len(event.plugin) + len(event.kind)
    for key, value in event.detail.items():
        size += len(key) + 8
        t = type(value)
        if t is str or t is bytes:
            size += len(value)
        elif value is None or t is int or t is float or t is bool:
            continue
        else:
            try:
                size += len(orjson.dumps(value, default=str))
            except (TypeError, orjson.JSONEncodeError):
                size += 1024
    return size


class SubscriptionLagged(Exception):
    """The subscriber fell behind its budget and was ended (subscriptions with ``on_lag``)."""

    def __init__(self, dropped: int) -> None:
        super().__init__(f"subscriber fell behind: {dropped} events dropped")
        self.dropped = dropped


class Subscription:
    """One subscriber's queue: at most ``maxlen`` events and ``max_bytes`` estimated bytes.

    The newest event is always accepted (a single event larger than the budget is
    held alone: it exists anyway, and the reader is about to take it); older ones
    make room. ``wants`` filters before queueing, so events the subscriber would
    skip neither cost memory nor count as dropped.
    """

    def __init__(self, maxlen: int, max_bytes: int = DEFAULT_MAX_BYTES, *,
                 wants: Callable[[SupervisorEvent], bool] | None = None,
                 on_lag: Callable[[int], None] | None = None) -> None:
        if maxlen < 1 or max_bytes < 1:
            raise ValueError("maxlen and max_bytes must be positive")
        self._queue: deque[SupervisorEvent] = deque()
        self._sizes: deque[int] = deque()
        self._wakeup = anyio.Event()
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        """Estimated bytes queued now (never above ``max_bytes`` but for one lone event)."""
        self.dropped = 0
        """Events lost because this subscriber fell behind."""
        self.lagged = False
        """True once a subscription with ``on_lag`` was ended for falling behind."""
        self.accepted = 0
        """Events queued so far (with ``on_lag`` nothing is dropped from the middle, so the
        n-th event :meth:`next` returns is the n-th accepted)."""
        self._wants = wants
        self._on_lag = on_lag

    def _push(self, event: SupervisorEvent, size: int | None = None) -> None:
        if self.lagged or (self._wants is not None and not self._wants(event)):
            if self.lagged:
                self.dropped += 1
            return
        queue, sizes = self._queue, self._sizes
        if len(sizes) != len(queue):  # someone emptied _queue by hand (tests do)
            self._resync()
        if size is None:
            size = event_size(event)
        if queue and (len(queue) >= self.maxlen or self.queued_bytes + size > self.max_bytes):
            if self._on_lag is not None:
                self._lag()
                return
            while queue and (len(queue) >= self.maxlen
                             or self.queued_bytes + size > self.max_bytes):
                queue.popleft()
                self.queued_bytes -= sizes.popleft()
                self.dropped += 1
        queue.append(event)
        sizes.append(size)
        self.queued_bytes += size
        self.accepted += 1
        self._wakeup.set()

    def _lag(self) -> None:
        """Past the budget with ``on_lag``: free the queue, end, tell the owner once."""
        self.dropped += len(self._queue) + 1
        self._queue.clear()
        self._sizes.clear()
        self.queued_bytes = 0
        self.lagged = True
        self._wakeup.set()
        assert self._on_lag is not None
        try:
            self._on_lag(self.dropped)
        except Exception:  # the owner's bug must not reach the publisher (a plugin's runner)
            log.exception("event subscriber's on_lag failed")

    def _resync(self) -> None:
        self._sizes = deque(event_size(e) for e in self._queue)
        self.queued_bytes = sum(self._sizes)

    async def next(self) -> SupervisorEvent:
        """The oldest queued event; waits for one. Raises :class:`SubscriptionLagged` once
        a subscription with ``on_lag`` was ended and its queue is empty."""
        while not self._queue:
            if self.lagged:
                raise SubscriptionLagged(self.dropped)
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
        event = self._queue.popleft()
        if len(self._sizes) > len(self._queue):
            self.queued_bytes -= self._sizes.popleft()
        return event

    def __aiter__(self) -> AsyncIterator[SupervisorEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SupervisorEvent]:
        while True:
            yield await self.next()


RECENT_EVENTS = 1000
RECENT_BYTES = 1024 * 1024
"""The history kept for late subscribers (``subscribe(since=...)``, ``pipevisor events
--since``): the last 1,000 events and at most 1 MiB of them; stderr lines are not
kept (each plugin's stderr tail keeps those)."""


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._recent: deque[tuple[SupervisorEvent, int]] = deque()
        self._recent_bytes = 0

    def recent(self, since: float) -> list[SupervisorEvent]:
        """The kept events published at or after ``since`` (wall time), oldest first."""
        return [event for event, _ in self._recent if event.time >= since]

    def _remember(self, event: SupervisorEvent, size: int) -> None:
        recent = self._recent
        recent.append((event, size))
        self._recent_bytes += size
        while len(recent) > RECENT_EVENTS or self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= recent.popleft()[1]

    def publish(self, event: SupervisorEvent) -> None:
        subscribers = self._subscribers
        if event.kind is not EventKind.STDERR:
            size = event_size(event)
            self._remember(event, size)
        elif not subscribers:
            return
        else:
            size = event_size(event)
        if not subscribers:
            return
        for sub in tuple(subscribers):  # a lagging one may leave while we go
            sub._push(event, size)

    @asynccontextmanager
    async def subscribe(self, maxlen: int = DEFAULT_MAXLEN, *,
                        max_bytes: int = DEFAULT_MAX_BYTES,
                        wants: Callable[[SupervisorEvent], bool] | None = None,
                        on_lag: Callable[[int], None] | None = None,
                        since: float | None = None,
                        ) -> AsyncIterator[Subscription]:
        """A subscription for the ``async with`` block; see :class:`Subscription` for
        ``maxlen``, ``max_bytes``, ``wants`` and ``on_lag``. With ``since`` (wall
        time), the kept events published from then on come first (at most the history
        :data:`RECENT_EVENTS` holds), then the live ones: none twice, none lost."""
        sub = Subscription(maxlen, max_bytes, wants=wants, on_lag=on_lag)
        if since is not None:  # no await between this and the add: nothing falls between
            for event in self.recent(since):
                sub._push(event)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
