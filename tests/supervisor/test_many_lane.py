"""The two asyncio pieces under ``Supervisor.call_many`` (io/pipes.py), on their own:
``FifoDeadlines`` (one timer for a sender's deadlines) and ``Waker`` (one task woken by
many callbacks). test_call_many.py drives them through real plugins."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from pipevisor.supervisor.io.pipes import FifoDeadlines, Waker

pytestmark = pytest.mark.anyio


async def test_deadlines_expire_live_keys_in_order_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    expired: list[tuple[int, float]] = []
    live = {1, 2, 3, 4}
    all_gone = anyio.Event()

    def expire(key: int) -> None:
        expired.append((key, loop.time()))
        live.discard(key)
        if not live:
            all_gone.set()

    deadlines = FifoDeadlines(loop, expire, live.__contains__)
    start = loop.time()
    due = {1: start + 0.02, 2: start + 0.04, 3: start + 0.04, 4: start + 0.08}
    for key, at in due.items():
        deadlines.add(at, key, len(live))
    live.discard(2)  # answered: never expired
    with anyio.fail_after(5):
        await all_gone.wait()
    assert [key for key, _ in expired] == [1, 3, 4]
    for key, when in expired:
        assert when >= due[key]
    assert len(deadlines) == 0


async def test_answered_entries_do_not_pile_up() -> None:
    loop = asyncio.get_running_loop()
    live: set[int] = set()
    deadlines = FifoDeadlines(loop, lambda key: None, live.__contains__)
    now = loop.time()
    for key in range(20_000):  # a long batch, 4 in flight, each answered at once
        live.add(key)
        deadlines.add(now + 30, key, len(live))
        live.discard(key - 4)
    assert len(deadlines) <= 5
    # one call that never answers holds the front: the rest are still dropped
    live.clear()
    deadlines.close()
    live.add(-1)
    deadlines.add(now + 30, -1, 1)
    for key in range(20_000):
        live.add(key)
        deadlines.add(now + 30, key, len(live))
        live.discard(key - 4)
    assert len(deadlines) <= 2 * 5 + FifoDeadlines.COMPACT_SLACK + 1
    deadlines.close()


async def test_a_deadline_a_tick_early_is_kept_in_order() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    live = {"a", "b"}
    deadlines = FifoDeadlines(loop, expired.append, live.__contains__)
    now = loop.time()
    deadlines.add(now + 0.02, "a", 2)
    deadlines.add(now + 0.01, "b", 2)  # earlier than the last: held to its place
    with anyio.fail_after(5):
        while len(expired) < 2:
            await anyio.sleep(0.01)
    assert expired == ["a", "b"]


async def test_closed_deadlines_fire_nothing() -> None:
    loop = asyncio.get_running_loop()
    expired: list[int] = []
    deadlines = FifoDeadlines(loop, expired.append, lambda key: True)
    due = loop.time() + 0.01
    deadlines.add(due, 1, 1)
    deadlines.close()
    later = anyio.Event()
    loop.call_at(due + 0.001, later.set)  # timers run in order: the closed one was first
    with anyio.fail_after(5):
        await later.wait()
    assert expired == []


async def test_a_poke_before_the_wait_is_not_lost() -> None:
    waker = Waker(asyncio.get_running_loop())
    waker.poke()
    with anyio.fail_after(1):
        await waker.wait()  # returns at once


async def test_a_poke_wakes_the_waiting_task_once() -> None:
    loop = asyncio.get_running_loop()
    waker = Waker(loop)
    woken = 0

    async def waiter() -> None:
        nonlocal woken
        await waker.wait()
        woken += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert woken == 0
        waker.poke()
        waker.poke()  # a second poke of the same wake-up is not kept for later
    assert woken == 1
    with anyio.move_on_after(0.05) as scope:
        await waker.wait()
    assert scope.cancelled_caught  # nothing pending: it waits


async def test_a_cancelled_wait_leaves_the_waker_usable() -> None:
    waker = Waker(asyncio.get_running_loop())
    with anyio.move_on_after(0.01):
        await waker.wait()
    waker.poke()
    with anyio.fail_after(1):
        await waker.wait()
