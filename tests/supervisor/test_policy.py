"""The restart policy and the state table, as pure logic (no processes, no clock)."""

from __future__ import annotations

import pytest

from pipevisor.supervisor.engine.policy import RestartMode, RestartPolicy, RestartTracker
from pipevisor.supervisor.engine.states import TRANSITIONS, PluginState, check_transition


def tracker(**kw: object) -> RestartTracker:
    return RestartTracker(RestartPolicy(**kw), rand=lambda: 0.5)  # type: ignore[arg-type]


def test_first_restart_is_immediate_then_backoff_grows_to_the_cap() -> None:
    t = tracker(first_backoff=0.1, factor=2.0, max_delay=0.5, max_restarts=100,
                within_seconds=1000)
    delays = [t.on_exit(now=i, uptime=0.1, failed=True).delay for i in range(7)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


def test_jitter_stays_within_bounds() -> None:
    for r in (0.0, 1.0):
        t = RestartTracker(RestartPolicy(first_backoff=1.0, jitter=0.2, max_restarts=10),
                           rand=lambda r=r: r)
        t.on_exit(0, 0, True)
        d = t.on_exit(1, 0, True).delay
        assert 0.8 - 1e-9 <= d <= 1.2 + 1e-9
        assert d == pytest.approx(0.8 if r == 0.0 else 1.2)


def test_stable_uptime_resets_the_backoff() -> None:
    t = tracker(first_backoff=0.1, reset_after=60, max_restarts=100, within_seconds=1)
    for i in range(4):
        t.on_exit(now=i * 10, uptime=1, failed=True)
    assert t.on_exit(now=100, uptime=61, failed=True).delay == 0.0


def test_intensity_limit_gives_up() -> None:
    t = tracker(max_restarts=3, within_seconds=60)
    decisions = [t.on_exit(now=i, uptime=0.1, failed=True) for i in range(4)]
    assert [d.restart for d in decisions] == [True, True, True, False]
    assert decisions[-1].give_up
    assert "3 times within 60 s" in decisions[-1].reason


def test_restarts_outside_the_window_do_not_count() -> None:
    t = tracker(max_restarts=2, within_seconds=10)
    assert t.on_exit(0, 0, True).restart
    assert t.on_exit(5, 0, True).restart
    assert t.on_exit(11, 0, True).restart  # the one at t=0 left the window
    assert not t.on_exit(12, 0, True).restart  # 5 and 11 are both within 10 s


def test_modes() -> None:
    assert not tracker(mode=RestartMode.NEVER).on_exit(0, 0, True).restart
    on_failure = tracker(mode=RestartMode.ON_FAILURE)
    assert not on_failure.on_exit(0, 5, failed=False).restart
    assert on_failure.on_exit(0, 5, failed=True).restart
    assert tracker(mode=RestartMode.ALWAYS).on_exit(0, 5, failed=False).restart


def test_reset_forgets_history() -> None:
    t = tracker(max_restarts=1)
    t.on_exit(0, 0, True)
    assert not t.on_exit(1, 0, True).restart
    t.reset()
    assert t.on_exit(2, 0, True).restart


@pytest.mark.parametrize("bad", [{"factor": 0.5}, {"jitter": 1.0}, {"max_restarts": -1},
                                 {"within_seconds": 0}, {"max_delay": -1}])
def test_invalid_policies_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**bad)  # type: ignore[arg-type]


def test_every_state_is_reachable_and_illegal_moves_raise() -> None:
    reachable = {PluginState.STOPPED}
    frontier = [PluginState.STOPPED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(PluginState)
    check_transition(PluginState.READY, PluginState.BACKOFF)
    with pytest.raises(RuntimeError):
        check_transition(PluginState.STOPPED, PluginState.READY)
