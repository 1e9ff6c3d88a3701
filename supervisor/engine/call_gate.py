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
    """The in-flight slots of one plugin and the callers queued for them.

    The slot count is renegotiated per instance (``resize``): a plugin may announce a
    lower ``maxConcurrency`` in its handshake, and a raw-mode server has its preset's.
    Callers already holding a slot of the old size release it there, so resizing
    never lets more than the new limit through for long, and never strands a caller.
    """

    def __init__(self, plugin: str, max_in_flight: int, max_queued: int) -> None:
        self.plugin = plugin
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self._slots = anyio.Semaphore(max_in_flight, fast_acquire=True)
        self.waiting = 0
        """Calls waiting for a free slot."""

    def resize(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._slots = anyio.Semaphore(max_in_flight, fast_acquire=True)

    async def enter(self, method: str, deadline: float, timeout: float) -> anyio.Semaphore:
        """Take a slot before ``deadline``; returns what to release it on."""
        slots = self._slots
        verdict = admission(slots.value, self.waiting, self.max_queued)
        if verdict == "go":
            await slots.acquire()
            return slots
        if verdict == "full":
            raise local(ErrorCode.QUEUE_FULL,
                        f"plugin {self.plugin!r} has {self.waiting} calls queued "
                        f"(max_queued={self.max_queued})", plugin=self.plugin, method=method)
        self.waiting += 1
        acquired = False
        try:
            with anyio.move_on_after(deadline - anyio.current_time()):
                await slots.acquire()
                acquired = True
        finally:
            self.waiting -= 1
        if not acquired:
            raise local(ErrorCode.TIMEOUT,
                        f"call to {self.plugin}.{method} waited {timeout:g} s in the queue",
                        plugin=self.plugin, method=method, timeout=timeout)
        return slots


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
