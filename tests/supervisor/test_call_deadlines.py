"""The connection's one deadline timer (io/pipes.py CallDeadlines), without processes:
a waiting call times out at its deadline and not before, an answered one never does,
and the heap follows the calls in flight, not the call rate."""

from __future__ import annotations

import asyncio
import functools

from pipevisor.supervisor.io.pipes import CallDeadlines, FutureSlot


def _record(into: list[str], name: str, _future: object) -> None:
    into.append(name)


def test_waiting_calls_time_out_in_deadline_order_answered_ones_never() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        d = CallDeadlines(loop)
        fired: list[str] = []
        now = loop.time()
        slots: dict[str, FutureSlot] = {}
        for name, delay in (("late", 0.15), ("early", 0.05), ("answered", 0.01), ("mid", 0.1)):
            slot = FutureSlot(loop.create_future())
            if name != "answered":
                slot.future.add_done_callback(functools.partial(_record, fired, name))
            d.add(now + delay, slot, len(slots) + 1)
            slots[name] = slot
        slots["answered"].response = object()
        slots["answered"].set()  # the answer arrives first
        await asyncio.wait_for(slots["late"].future, 2)
        for name in ("early", "mid", "late"):
            assert slots[name].response is None  # settled without an answer: a timeout
        assert loop.time() - now >= 0.15 - 0.01  # never early (one clock tick of slack)
        return fired

    assert asyncio.run(main()) == ["early", "mid", "late"]


def test_an_earlier_deadline_rearms_the_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = CallDeadlines(loop)
        now = loop.time()
        slow = FutureSlot(loop.create_future())
        d.add(now + 30, slow, 1)
        quick = FutureSlot(loop.create_future())
        d.add(now + 0.05, quick, 2)
        await asyncio.wait_for(quick.future, 2)  # not 30 s: the timer moved forward
        assert not slow.future.done()
        d.close()

    asyncio.run(main())


def test_heap_is_bounded_by_calls_in_flight_not_by_the_call_rate() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = CallDeadlines(loop)
        waiting: list[FutureSlot] = []
        biggest = 0
        for i in range(50_000):
            slot = FutureSlot(loop.create_future())
            d.add(loop.time() + 60, slot, 64)
            waiting.append(slot)
            if len(waiting) > 64:  # 64 in flight; the oldest is answered
                old = waiting.pop(0)
                old.response = i
                old.set()
            biggest = max(biggest, len(d))
        assert biggest <= 2 * 64 + CallDeadlines.COMPACT_SLACK + 1
        assert not any(s.future.done() for s in waiting)
        d.close()

    asyncio.run(main())


def test_a_cancelled_caller_leaves_nothing_behind() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = CallDeadlines(loop)
        slot = FutureSlot(loop.create_future())
        d.add(loop.time() + 0.02, slot, 1)
        slot.future.cancel()  # what a cancelled awaiting task does to its future
        later = FutureSlot(loop.create_future())
        d.add(loop.time() + 0.05, later, 1)
        await asyncio.wait_for(later.future, 2)  # the timer skipped the cancelled one
        assert slot.future.cancelled() and later.response is None
        assert len(d) == 0

    asyncio.run(main())
