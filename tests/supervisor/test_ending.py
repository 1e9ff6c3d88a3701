"""The end/restart funnel as pure functions (engine/ending.py): every branch, no process."""

from __future__ import annotations

import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor.engine.ending import (
    End,
    EndKind,
    after_backoff,
    after_end,
    claim,
    exit_end,
)
from pipevisor.supervisor.engine.health import first_ping_delay
from pipevisor.supervisor.engine.policy import Decision, RestartMode, RestartPolicy, RestartTracker
from pipevisor.supervisor.engine.states import PluginState

S = PluginState
LIVE = (S.STARTING, S.HANDSHAKING, S.READY, S.DEGRADED)


def _never_asked(failed: bool) -> Decision:
    raise AssertionError("the restart policy must not be consulted here")


@pytest.mark.parametrize("state", LIVE)
@pytest.mark.parametrize("kind", [EndKind.STOP, EndKind.RESTART, EndKind.UNLOAD])
def test_an_operators_ending_moves_to_stopping_at_once(state: PluginState, kind: EndKind) -> None:
    assert claim(state, False, End(kind, "asked", failed=False)) == "take_stopping"


@pytest.mark.parametrize("state", LIVE)
@pytest.mark.parametrize("kind", [EndKind.EXITED, EndKind.HUNG, EndKind.LIMIT,
                                  EndKind.PROTOCOL, EndKind.INTERNAL])
def test_a_plugins_ending_is_taken_without_stopping(state: PluginState, kind: EndKind) -> None:
    assert claim(state, False, End(kind, "it died")) == "take"


def test_a_stop_while_already_stopping_takes_without_a_second_transition() -> None:
    assert claim(S.STOPPING, False, End(EndKind.STOP, "again", failed=False)) == "take"


@pytest.mark.parametrize("state", (*LIVE, S.STOPPING))
def test_the_first_ending_wins(state: PluginState) -> None:
    assert claim(state, True, End(EndKind.EXITED, "second")) == "ignore"
    assert claim(state, True, End(EndKind.STOP, "second", failed=False)) == "ignore"


@pytest.mark.parametrize("state", [S.STOPPED, S.FAILED])
def test_nothing_to_end_between_instances(state: PluginState) -> None:
    assert claim(state, False, End(EndKind.STOP, "x", failed=False)) == "ignore"


def test_a_request_during_backoff_wakes_the_loop() -> None:
    assert claim(S.BACKOFF, False, End(EndKind.STOP, "x", failed=False)) == "wake_backoff"


def test_close_wins_over_everything() -> None:
    for kind in EndKind:
        step = after_end(End(kind, "why"), "close", limit_stop=False, policy=_never_asked)
        assert (step.state, step.close, step.again) == ("stopped", True, False)


def test_operator_stop_and_restart_skip_the_policy() -> None:
    stop = after_end(End(EndKind.STOP, "stopped on request", failed=False), None,
                     limit_stop=False, policy=_never_asked)
    assert (stop.state, stop.again, stop.reason) == ("stopped", False, "stopped on request")
    again = after_end(End(EndKind.RESTART, "restarted", failed=False), "restart",
                      limit_stop=False, policy=_never_asked)
    assert (again.state, again.again) == ("stopped", True)


def test_a_limit_with_action_stop_stays_stopped() -> None:
    step = after_end(End(EndKind.LIMIT, "over memory"), None, limit_stop=True,
                     policy=_never_asked)
    assert step.state == "stopped"


def test_give_up_fails_without_the_policy() -> None:
    step = after_end(End(EndKind.SPAWN, "no such file", give_up=True), None,
                     limit_stop=False, policy=_never_asked)
    assert (step.state, step.reason) == ("failed", "no such file")


def test_the_policy_decides_a_crash() -> None:
    asked: list[bool] = []

    def policy(failed: bool) -> Decision:
        asked.append(failed)
        return Decision(True, delay=0.25, reason="restarting")

    step = after_end(End(EndKind.EXITED, "exited with code 3"), None, limit_stop=False,
                     policy=policy)
    assert asked == [True]
    assert (step.state, step.delay) == ("backoff", 0.25)
    assert step.reason == "exited with code 3; restart in 0.25 s"
    clean = after_end(End(EndKind.EXITED, "exited with code 0", failed=False), None,
                      limit_stop=False, policy=policy)
    assert asked == [True, False] and clean.state == "backoff"


def test_a_crash_loop_ends_failed_with_the_policys_reason() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=2, within_seconds=60, jitter=0))
    clock = [100.0]

    def policy(failed: bool) -> Decision:
        clock[0] += 1
        return tracker.on_exit(clock[0], 0.0, failed)

    crash = End(EndKind.EXITED, "killed by SIGSEGV")
    states = [after_end(crash, None, limit_stop=False, policy=policy) for _ in range(3)]
    assert [s.state for s in states] == ["backoff", "backoff", "failed"]
    assert "giving up" in states[2].reason and states[2].reason.startswith("killed by SIGSEGV; ")
    assert tracker.total_restarts == 2


def test_policy_never_leaves_it_stopped() -> None:
    tracker = RestartTracker(RestartPolicy(mode=RestartMode.NEVER))
    step = after_end(End(EndKind.EXITED, "exited with code 1"), None, limit_stop=False,
                     policy=lambda failed: tracker.on_exit(0.0, 0.0, failed))
    assert step.state == "stopped" and "restart policy is never" in step.reason


def test_after_backoff() -> None:
    assert after_backoff(None) == "start"
    assert after_backoff("start") == "start"
    assert after_backoff("restart") == "start"
    assert after_backoff("stop") == "stop"
    assert after_backoff("close") == "close"


def test_a_crash_is_a_failure_with_its_exit_and_tail() -> None:
    end = exit_end("p", "killed by SIGSEGV", -11, ["boom"], handshaking=False, junk=None)
    assert (end.kind, end.failed, end.give_up) == (EndKind.EXITED, True, False)
    assert end.detail == "plugin 'p' killed by SIGSEGV"
    assert end.error is not None and end.error.code == ErrorCode.PLUGIN_CRASHED
    assert end.error.data["returncode"] == -11 and end.error.data["stderr"] == ["boom"]


def test_exit_0_is_not_a_failure_unless_it_never_served() -> None:
    assert not exit_end("p", "exited with code 0", 0, [], handshaking=False, junk=None).failed
    early = exit_end("p", "exited with code 0", 0, [], handshaking=True, junk=None)
    assert early.failed and not early.give_up and "during the handshake" in early.detail


def test_junk_then_death_during_the_handshake_is_given_up_on() -> None:
    end = exit_end("p", "exited with code 2", 2, [], handshaking=True, junk=b"Usage: p FILE")
    assert end.give_up and "b'Usage: p FILE'" in end.detail and "not restarted" in end.detail
    later = exit_end("p", "exited with code 2", 2, [], handshaking=False, junk=b"x")
    assert not later.give_up  # junk only counts while it never spoke the protocol


def test_first_pings_spread_over_the_second_half_of_the_interval() -> None:
    delays = [first_ping_delay(10.0, i / 100) for i in range(100)]
    assert min(delays) == 5.0 and max(delays) < 10.0
    assert len({round(d, 3) for d in delays}) == 100  # spread, not one instant
    assert first_ping_delay(10.0, 0.999999) <= 10.0  # never later than one interval
