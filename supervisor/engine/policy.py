"""Restart policy: when to restart an exited plugin, after how long, and when to give up.

Pure logic: time comes in as arguments and randomness through an injected
function, so the whole policy is tested without processes or clocks.

Backoff is exponential with jitter, reset once the plugin stayed up for
``reset_after`` seconds. Restart intensity follows OTP supervisors: more than
``max_restarts`` restarts within ``within_seconds`` means the plugin is
crash-looping, and it goes to ``failed`` until someone starts it again.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class RestartMode(StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    mode: RestartMode = RestartMode.ALWAYS
    initial_delay: float = 0.0
    """First restart is immediate: a one-off crash should cost only the start-up time."""
    factor: float = 2.0
    max_delay: float = 30.0
    first_backoff: float = 0.1
    """Delay of the second quick restart in a row; doubles from there."""
    jitter: float = 0.2
    """Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]."""
    reset_after: float = 60.0
    max_restarts: int = 5
    within_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.factor < 1 or self.max_delay < 0 or self.initial_delay < 0:
            raise ValueError("backoff factor must be >= 1 and delays >= 0")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.max_restarts < 0 or self.within_seconds <= 0:
            raise ValueError("max_restarts must be >= 0 and within_seconds > 0")


@dataclass(frozen=True, slots=True)
class Decision:
    restart: bool
    delay: float = 0.0
    reason: str = ""
    give_up: bool = False
    """True when the plugin must go to ``failed`` (not merely stay stopped)."""


class RestartTracker:
    """Remembers recent restarts of one plugin and decides about the next one."""

    def __init__(
        self, policy: RestartPolicy, rand: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy
        self._rand = rand
        self._restarts: deque[float] = deque()
        self._streak = 0
        self.total_restarts = 0

    def reset(self) -> None:
        """An operator started the plugin by hand: forget its history."""
        self._restarts.clear()
        self._streak = 0

    def on_exit(self, now: float, uptime: float, failed: bool) -> Decision:
        p = self.policy
        if p.mode is RestartMode.NEVER or (p.mode is RestartMode.ON_FAILURE and not failed):
            return Decision(False, reason=f"restart policy is {p.mode}")
        while self._restarts and now - self._restarts[0] > p.within_seconds:
            self._restarts.popleft()
        if len(self._restarts) >= p.max_restarts:
            return Decision(
                False,
                reason=f"restarted {len(self._restarts)} times within {p.within_seconds:g} s "
                f"(limit {p.max_restarts}); giving up",
                give_up=True,
            )
        if uptime >= p.reset_after:
            self._streak = 0
        if self._streak == 0:
            delay = p.initial_delay
        else:
            delay = min(p.max_delay, p.first_backoff * p.factor ** (self._streak - 1))
        if p.jitter and delay:
            delay *= 1 - p.jitter + 2 * p.jitter * self._rand()
        self._streak += 1
        self._restarts.append(now)
        self.total_restarts += 1
        return Decision(True, delay=delay, reason="restarting")
