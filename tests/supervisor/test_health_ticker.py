"""engine/health.py's ticker without processes: batching by slot, stopping, and a ping
that raises. Hang detection end to end stays in test_lifecycle/test_hostile."""

from __future__ import annotations

import itertools

import anyio
import pytest

from pipevisor.supervisor.engine.health import SLOT, HealthTicker, due_time

pytestmark = pytest.mark.anyio


def test_long_intervals_round_up_to_their_slot_short_ones_do_not() -> None:
    assert due_time(10.01, 10.0) == pytest.approx(10.1)
    assert due_time(10.1, 10.0) == pytest.approx(10.1)
    assert due_time(10.01, 10 * SLOT - 0.01) == 10.01  # too short to delay by a slot


async def test_pings_due_in_one_slot_go_out_together_and_repeat() -> None:
    ticker = HealthTicker()
    sent: dict[int, list[float]] = {i: [] for i in range(20)}
    all_twice = anyio.Event()

    def pinger(i: int):  # type: ignore[no-untyped-def]
        async def ping() -> bool:
            sent[i].append(anyio.current_time())
            if all(len(v) >= 2 for v in sent.values()):
                all_twice.set()
            return True
        return ping

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        for i in range(20):  # first pings spread over 0.2-0.3 s: at most two slots
            ticker.watch(1.0, pinger(i), 0.2 + i * 0.005)
        with anyio.fail_after(5):
            await all_twice.wait()
        tg.cancel_scope.cancel()
    firsts = sorted(v[0] for v in sent.values())
    wakes = 1 + sum(1 for a, b in itertools.pairwise(firsts) if b - a > 0.01)
    assert wakes <= 2, firsts  # one wake-up per slot, not one per plugin (20 otherwise)
    for times in sent.values():
        assert times[1] - times[0] == pytest.approx(1.0, abs=SLOT + 0.05)


async def test_a_cancelled_watch_or_a_finished_one_is_not_pinged_again() -> None:
    ticker = HealthTicker()
    counts = {"cancelled": 0, "done": 0, "steady": 0}
    steady_three = anyio.Event()

    async def done() -> bool:
        counts["done"] += 1
        return False  # the instance ended

    async def steady() -> bool:
        counts["steady"] += 1
        if counts["steady"] == 3:
            steady_three.set()
        return True

    async def cancelled() -> bool:
        counts["cancelled"] += 1
        return True

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        ticker.watch(0.05, done, 0.0)
        ticker.watch(0.05, steady, 0.0)
        ticker.watch(0.05, cancelled, 10.0).cancel()
        with anyio.fail_after(5):
            await steady_three.wait()
        tg.cancel_scope.cancel()
    assert counts["done"] == 1 and counts["cancelled"] == 0


async def test_a_ping_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    ticker = HealthTicker()
    good = 0
    twice = anyio.Event()

    async def broken() -> bool:
        raise RuntimeError("a bug in one ping")

    async def fine() -> bool:
        nonlocal good
        good += 1
        if good == 2:
            twice.set()
        return True

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        ticker.watch(0.05, broken, 0.0)
        ticker.watch(0.05, fine, 0.0)
        with anyio.fail_after(5):
            await twice.wait()
        tg.cancel_scope.cancel()
    assert "a liveness ping failed" in caplog.text
