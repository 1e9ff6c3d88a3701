"""How an instance ends and what happens next, as pure functions.

Everything that can end a plugin's instance (its exit, a closed pipe, a missed ping,
a protocol fault, a limit, an operator's stop) becomes one :class:`End`, and the
runner funnels it through two decisions made here: :func:`claim` (does this ending
win, or is another one already in charge?) and :func:`after_end` (stopped, failed,
restarted at once, or backoff for how long?). Keeping them free of I/O lets
tests/supervisor/test_ending.py walk every branch in milliseconds; the runner only
acts on the verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pipevisor.protocol import ErrorCode, ErrorObject, local_error
from pipevisor.supervisor.engine.policy import Decision
from pipevisor.supervisor.engine.states import PluginState

__all__ = ["End", "EndKind", "Next", "Want", "after_backoff", "after_end", "claim", "exit_end"]

S = PluginState

Want = Literal["start", "stop", "restart", "close"] | None
"""What was last asked of the plugin's run loop (``None``: nothing pending)."""


class EndKind(StrEnum):
    SPAWN = "spawn"
    """The executable could not be started at all."""
    EXITED = "exited"
    """The process exited, or closed a pipe it cannot live without."""
    HUNG = "hung"
    """No answer to a liveness ping."""
    PROTOCOL = "protocol"
    """A protocol fault or an invalid result, under ``on_protocol_error = restart``."""
    HANDSHAKE = "handshake"
    START = "start"
    """A preset's ``initialize`` or the configured start sequence failed."""
    LIMIT = "limit"
    INTERNAL = "internal"
    """pipevisor itself raised while serving the instance."""
    STOP = "stop"
    RESTART = "restart"
    UNLOAD = "unload"


GRACEFUL = frozenset({EndKind.STOP, EndKind.RESTART, EndKind.UNLOAD})
"""Endings asked for by an operator or the host: the plugin is shut down politely."""


@dataclass(slots=True)
class End:
    """Why an instance ended."""

    kind: EndKind
    detail: str
    failed: bool = True
    """Whether the restart policy counts it as a failure (``on-failure`` restarts)."""
    give_up: bool = False
    """A restart cannot help (bad executable, no common protocol): ``failed`` at once."""
    error: ErrorObject | None = None
    """What every call still in flight is answered with (else a generic stop error)."""

    @property
    def graceful(self) -> bool:
        return self.kind in GRACEFUL


Claim = Literal["take", "take_stopping", "wake_backoff", "ignore"]


def claim(state: PluginState, ending: bool, end: End) -> Claim:
    """Whether a new ending is the one that ends the current instance.

    The first ending wins (``take``); an operator's stop, restart or unload also moves
    the plugin to ``stopping`` at once (``take_stopping``) so calls made from then on
    wait for the next instance instead of reaching one that is going away. Between
    instances there is nothing to end, but a plugin in ``backoff`` is woken so that
    the run loop sees the request now rather than after the delay.
    """
    if not ending and state not in (S.STOPPED, S.FAILED, S.BACKOFF):
        if end.graceful and state is not S.STOPPING:
            return "take_stopping"
        return "take"
    if state is S.BACKOFF:
        return "wake_backoff"
    return "ignore"


@dataclass(frozen=True, slots=True)
class Next:
    """What the run loop does once an instance has ended."""

    state: Literal["stopped", "failed", "backoff"]
    reason: str
    again: bool = False
    """Start a new instance at once (an operator's restart), after ``stopped``."""
    close: bool = False
    """The run loop returns (unload, supervisor exit)."""
    delay: float = 0.0
    """Seconds of backoff before the next instance (``state == "backoff"``)."""


def after_end(end: End, want: Want, *, limit_stop: bool,
              policy: Callable[[bool], Decision]) -> Next:
    """Decide what follows an ended instance.

    ``policy(failed)`` is the restart policy's verdict (``RestartTracker.on_exit`` bound
    to the clock and the instance's uptime); it is consulted only when neither the
    operator nor the ending itself has already decided, because asking it records a
    restart.
    """
    if want == "close":
        return Next("stopped", end.detail, close=True)
    if end.kind is EndKind.STOP:
        return Next("stopped", end.detail)
    if end.kind is EndKind.RESTART:
        return Next("stopped", end.detail, again=True)
    if end.kind is EndKind.LIMIT and limit_stop:
        return Next("stopped", end.detail)
    if end.give_up:
        return Next("failed", end.detail)
    decision = policy(end.failed)
    if decision.give_up:
        return Next("failed", f"{end.detail}; {decision.reason}")
    if not decision.restart:
        return Next("stopped", f"{end.detail}; {decision.reason}")
    return Next("backoff", f"{end.detail}; restart in {decision.delay:.2f} s",
                delay=decision.delay)


def after_backoff(want: Want) -> Literal["start", "stop", "close"]:
    """A backoff delay ran out or was cut short: start again unless asked to stop."""
    if want == "close":
        return "close"
    if want == "stop":
        return "stop"
    return "start"


def exit_end(plugin: str, how: str, returncode: int | None, tail: list[str], *,
             handshaking: bool, junk: bytes | None) -> End:
    """The ending of a plugin that died (or closed a pipe) on its own.

    Exit 0 is not a failure for ``on-failure`` restarts, unless it happened during the
    handshake: a plugin that quits before it ever served did not do its job. One that
    also wrote something that is not JSON-RPC (``junk``: the start of it; None once it
    spoke the protocol) is not a plugin at all, and restarting it cannot help. Every
    call still in flight gets PLUGIN_CRASHED with the exit and the last stderr lines.
    """
    message = f"plugin {plugin!r} {how}"
    give_up = False
    if handshaking:
        message += " during the handshake"
        if junk is not None:
            message += f"; it wrote no JSON-RPC, its output starts {junk!r}; not restarted"
            give_up = True
    error = local_error(ErrorCode.PLUGIN_CRASHED, message, plugin=plugin,
                        returncode=returncode, stderr=tail)
    return End(EndKind.EXITED, message, failed=returncode != 0 or handshaking,
               give_up=give_up, error=error)
