"""The lifecycle of one plugin as an explicit table of allowed transitions.

    stopped ──start──▶ starting ──spawned──▶ handshaking ──ok──▶ ready
       ▲                  │                      │      └─mismatch─▶ degraded
       │                  └──────────┬───────────┘                    │
       │                       exit / error                           │
       │                             ▼                                │
       ├────────◀──── stopping ◀── (stop) ── backoff ◀── exit ────────┤
       │                             │          │                     │
    failed ◀──── gave up (intensity, bad executable, no common protocol)

A transition not in the table is a bug in the supervisor and raises.
"""

from __future__ import annotations

from enum import StrEnum


class PluginState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    HANDSHAKING = "handshaking"
    READY = "ready"
    DEGRADED = "degraded"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"


S = PluginState

TRANSITIONS: dict[PluginState, frozenset[PluginState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.HANDSHAKING, S.BACKOFF, S.FAILED, S.STOPPING}),
    S.HANDSHAKING: frozenset({S.READY, S.DEGRADED, S.BACKOFF, S.FAILED, S.STOPPING}),
    S.READY: frozenset({S.DEGRADED, S.BACKOFF, S.FAILED, S.STOPPING}),
    S.DEGRADED: frozenset({S.READY, S.BACKOFF, S.FAILED, S.STOPPING}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.FAILED: frozenset({S.STARTING}),
}

SERVING = frozenset({S.READY, S.DEGRADED})
"""States in which calls are sent to the plugin."""

COMING_BACK = frozenset({S.STARTING, S.HANDSHAKING, S.BACKOFF})
"""States from which the plugin is expected to become ready without anyone acting."""


def check_transition(old: PluginState, new: PluginState) -> None:
    if new not in TRANSITIONS[old]:
        raise RuntimeError(f"illegal plugin state transition {old} -> {new}")
