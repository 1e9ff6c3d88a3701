"""Which calls reach a plugin, and when: the pure rules, and the one gate that applies
them.

A call is let through only while the plugin serves (``ready`` or ``degraded``) on a
connection that is still open; it waits while the plugin is on its way back (starting,
handshaking, in backoff, or an instance that is ending with a restart to follow); it
fails at once when nothing will bring the plugin back (stopped, failed, stopping for
good). Once through, it takes one of ``max_in_flight`` slots, or queues for one, up to
``max_queued`` callers; past that it is refused (QUEUE_FULL) without waiting, so a
flood of callers costs the host nothing but the answers.

:func:`serving_verdict` and :func:`admission` decide; :class:`CallGate` keeps the
counts and does the waiting. tests/supervisor/test_call_gate.py drives both without a
process.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import anyio

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor.engine.ending import Want
from pipevisor.supervisor.engine.states import COMING_BACK, SERVING, PluginState
from pipevisor.supervisor.errors import CallError, local

__all__ = ["CallGate", "admission", "not_ready_in_time", "serving_verdict", "unavailable"]


def serving_verdict(state: PluginState, want: Want, connection_open: bool
                    ) -> Literal["go", "wait", "unavailable"]:
    """Whether a call may go to the plugin now, should wait for it, or cannot be served."""
    if state in SERVING and connection_open:
        return "go"
    if state in COMING_BACK or state in SERVING or want in ("start", "restart"):
        # a serving state with its connection closed: the instance is ending, and the
        # run loop decides what comes next (a restart, usually)
        return "wait"
    return "unavailable"


def admission(free_slots: int, waiting: int, max_queued: int
              ) -> Literal["go", "queue", "full"]:
    """Whether a call takes a free slot, queues for one, or is refused."""
    if free_slots > 0:
        return "go"
    if waiting >= max_queued:
        return "full"
    return "queue"


class CallGate:
    """The in-flight slots of one plugin and the callers queued for them, in order.

    A plain counter, not a semaphore: taking a free slot costs no checkpoint and no
    event on the hot path. A queued caller waits on its own event; a slot given back
    goes straight to the first one in line (the count does not change), so a newcomer
    cannot overtake the queue. The slot count is renegotiated per instance
    (``resize``): a plugin may announce a lower ``maxConcurrency`` in its handshake, a
    raw-mode server has its preset's; calls already in flight finish, and no new one
    starts until the count is under the new limit.
    """

    def __init__(self, plugin: str, max_in_flight: int, max_queued: int) -> None:
        self.plugin = plugin
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.in_flight = 0
        self._queue: deque[anyio.Event] = deque()

    @property
    def waiting(self) -> int:
        """Calls waiting for a free slot."""
        return len(self._queue)

    def resize(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        while self._queue and self.in_flight < self.max_in_flight:
            self.in_flight += 1
            self._queue.popleft().set()

    def leave(self) -> None:
        """Give a slot back: to the first caller in line, else to the pool."""
        if self._queue and self.in_flight <= self.max_in_flight:
            self._queue.popleft().set()  # handed over: still in flight
        else:
            self.in_flight -= 1

    def try_enter(self) -> bool:
        """Take a free slot if one is there and nobody waits: the common case, with no
        coroutine to create and await. False: call :meth:`enter`."""
        if self.in_flight < self.max_in_flight and not self._queue:
            self.in_flight += 1
            return True
        return False

    async def enter(self, method: str, deadline: float, timeout: float) -> bool:
        """Take a slot before ``deadline``; True when that meant waiting in line. Every
        successful ``enter`` must be paired with one ``leave``."""
        verdict = admission(0 if self._queue else self.max_in_flight - self.in_flight,
                            len(self._queue), self.max_queued)
        if verdict == "go":
            self.in_flight += 1
            return False
        if verdict == "full":
            raise local(ErrorCode.QUEUE_FULL,
                        f"plugin {self.plugin!r} has {len(self._queue)} calls queued "
                        f"(max_queued={self.max_queued})", plugin=self.plugin, method=method)
        turn = anyio.Event()
        self._queue.append(turn)
        try:
            with anyio.move_on_after(deadline - anyio.current_time()):
                await turn.wait()
        except BaseException:
            if turn.is_set():
                self.leave()  # handed a slot while being cancelled: pass it on
            else:
                self._queue.remove(turn)
            raise
        if not turn.is_set():
            self._queue.remove(turn)
            raise local(ErrorCode.TIMEOUT,
                        f"call to {self.plugin}.{method} waited {timeout:g} s in the queue",
                        plugin=self.plugin, method=method, timeout=timeout)
        return True


def unavailable(plugin: str, method: str, state: PluginState, reason: str | None
                ) -> CallError:
    """The answer to a call the plugin cannot serve and will not come back for."""
    why = f": {reason}" if reason else ""
    return local(ErrorCode.PLUGIN_STOPPED, f"plugin {plugin!r} is {state}{why}",
                 plugin=plugin, method=method, state=str(state))


def not_ready_in_time(plugin: str, method: str, state: PluginState, reason: str | None
                      ) -> CallError:
    """The answer to a call whose deadline passed while the plugin was coming back."""
    return local(ErrorCode.PLUGIN_NOT_READY,
                 f"plugin {plugin!r} was not ready in time (state {state}"
                 + (f": {reason}" if reason else "") + ")",
                 plugin=plugin, method=method, state=str(state))
