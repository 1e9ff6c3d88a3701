"""State changes and incidents, published to whoever follows them (CLI, control socket, tests).

Publishing never blocks the supervisor: each subscriber has a bounded
buffer, and a subscriber that falls behind loses the oldest events and is
told how many it lost, instead of slowing every plugin down.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    plugin: str
    kind: str
    """'state', 'exit', 'fault', 'log', 'restart', 'limit', 'dropped' ..."""
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "kind": self.kind, "time": self.time, **self.detail}


class Subscription:
    def __init__(self, maxlen: int) -> None:
        self._queue: deque[SupervisorEvent] = deque(maxlen=maxlen)
        self._wakeup = anyio.Event()
        self.dropped = 0

    def _push(self, event: SupervisorEvent) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    async def next(self) -> SupervisorEvent:
        while not self._queue:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[SupervisorEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SupervisorEvent]:
        while True:
            yield await self.next()


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, event: SupervisorEvent) -> None:
        for sub in self._subscribers:
            sub._push(event)

    @asynccontextmanager
    async def subscribe(self, maxlen: int = 10_000) -> AsyncIterator[Subscription]:
        sub = Subscription(maxlen)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
