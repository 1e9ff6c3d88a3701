"""engine/health.py without processes: batching by slot, stopping, a ping that raises,
pings heard in callbacks with their deadlines kept by the ticker, and what an answer
says. Hang detection with real plugins is in test_health_pings (and test_lifecycle)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorCode, ErrorObject, ErrorResponse, RequestId, Response
from pipevisor.supervisor.engine.health import (
    ConnectionPings,
    HealthTicker,
    Heard,
    Sent,
    due_time,
    hear,
    held_by_throttle,
)

pytestmark = pytest.mark.anyio

SLOT = 0.1
"""The tickers here batch by a tenth of a second, so batching is seen in short tests; the
supervisor's is a second (health.SLOT)."""


def test_long_intervals_round_up_to_their_slot_short_ones_do_not() -> None:
    assert due_time(10.01, 10.0, SLOT) == pytest.approx(10.0 + SLOT)
    assert due_time(10.0 + SLOT, 10.0, SLOT) == pytest.approx(10.0 + SLOT)
    assert due_time(10.01, 10 * SLOT - 0.01, SLOT) == 10.01  # too short to delay by a slot
    assert due_time(10.01, 10.0) == pytest.approx(11.0)  # the supervisor's: a second


async def test_pings_due_in_one_slot_go_out_together_and_repeat() -> None:
    ticker = HealthTicker(slot=SLOT)
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
    ticker = HealthTicker(slot=SLOT)
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
    ticker = HealthTicker(slot=SLOT)
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


# ============================================================ pings heard in callbacks


def test_a_ping_is_excused_only_when_the_throttle_paused_the_plugin_meanwhile() -> None:
    assert not held_by_throttle(10.0, None, 0.0)  # never paused: a hang
    assert not held_by_throttle(10.0, None, 9.9)  # resumed before the ping went out
    assert held_by_throttle(10.0, 9.0, 0.0)  # paused now
    assert held_by_throttle(10.0, None, 10.5)  # paused and resumed while it was out


def _error(code: int, **data: object) -> ErrorResponse:
    return ErrorResponse(1, ErrorObject(code, "x", {"origin": "pipevisor", **data}))


def test_any_answer_from_the_plugin_is_alive_only_a_local_crash_or_timeout_is_not() -> None:
    """The verdicts Connection.call gives an awaited ping, for the same answers."""
    assert hear(Response(1, {}), False) is Heard.ALIVE
    assert hear(ErrorResponse(1, ErrorObject(-32601, "Method not found")), False) is Heard.ALIVE
    # a plugin forging pipevisor's crash code is still a plugin that answered
    assert hear(_error(ErrorCode.PLUGIN_CRASHED), False) is Heard.ALIVE
    assert hear(_error(ErrorCode.PLUGIN_CRASHED), True) is Heard.GONE
    assert hear(_error(ErrorCode.CONNECTION_CLOSED), True) is Heard.GONE
    assert hear(_error(ErrorCode.TIMEOUT), True) is Heard.TIMED_OUT
    assert hear(_error(ErrorCode.INVALID_RESPONSE), True) is Heard.ALIVE  # a junk reply
    assert hear(_error(ErrorCode.PLUGIN_STOPPED), True) is Heard.ALIVE  # as call() says


class FakePinger:
    """A :class:`Pinger` the test answers by hand: ``send`` records, nothing else."""

    def __init__(self, timeout: float = 10.0, sent: Sent = Sent.SENT,
                 again_when_overdue: bool = False) -> None:
        self.timeout = timeout
        self.result = sent
        self.again_when_overdue = again_when_overdue
        self.sends: list[float] = []
        self.overdues: list[float] = []
        self.answer: Callable[[bool], None] | None = None
        self.sent_event = anyio.Event()
        self.overdue_event = anyio.Event()

    def send(self, answered: Callable[[bool], None]) -> Sent:
        self.sends.append(anyio.current_time())
        self.answer = answered
        self.sent_event.set()
        return self.result

    def overdue(self) -> bool:
        self.overdues.append(anyio.current_time())
        self.overdue_event.set()
        return self.again_when_overdue

    async def next_send(self, deadline: float = 5.0) -> float:
        self.sent_event = anyio.Event()
        with anyio.fail_after(deadline):
            await self.sent_event.wait()
        return self.sends[-1]


async def never_awaited() -> bool:
    raise AssertionError("a ping with a pinger was awaited in a task")


async def test_pinger_pings_are_sent_in_the_slot_without_a_task_each(
        caplog: pytest.LogCaptureFixture) -> None:
    ticker = HealthTicker(slot=SLOT)
    pingers = [FakePinger() for _ in range(50)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        tasks = len(asyncio.all_tasks())
        for p in pingers:
            ticker.watch(1.0, never_awaited, 0.15, p)
        with anyio.fail_after(5):
            while not all(p.sends for p in pingers):
                await pingers[0].next_send()
        assert len(asyncio.all_tasks()) == tasks  # the sends started no task
        firsts = [p.sends[0] for p in pingers]
        assert max(firsts) - min(firsts) < 0.01, firsts  # one wake-up sent them all
        for p in pingers:  # answered: the next ping an interval after this one
            assert p.answer is not None
            p.answer(True)
        second = await pingers[0].next_send()
        assert second - pingers[0].sends[0] == pytest.approx(1.0, abs=SLOT + 0.05)
        tg.cancel_scope.cancel()
    assert "liveness ping failed" not in caplog.text
    assert not any(p.overdues for p in pingers)


async def test_an_unanswered_ping_is_overdue_after_its_timeout_and_at_most_a_slot() -> None:
    ticker = HealthTicker(slot=SLOT)
    mute = FakePinger(timeout=0.3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        watch = ticker.watch(1.0, never_awaited, 0.05, mute)
        sent = await mute.next_send()
        with anyio.fail_after(5):
            await mute.overdue_event.wait()
        late = mute.overdues[0] - sent
        assert 0.3 <= late <= 0.3 + SLOT + 0.05, late
        assert watch.cancelled and ticker.watched == 0  # overdue() said: no more pings
        assert mute.answer is not None
        mute.answer(True)  # an answer after the verdict changes nothing
        assert ticker.watched == 0
        tg.cancel_scope.cancel()
    assert len(mute.sends) == 1 and len(mute.overdues) == 1


async def test_an_overdue_ping_excused_pings_on_and_an_answer_in_time_is_never_overdue(
        ) -> None:
    ticker = HealthTicker(slot=SLOT)
    excused = FakePinger(timeout=0.1, again_when_overdue=True)
    prompt = FakePinger(timeout=0.1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        ticker.watch(0.3, never_awaited, 0.0, excused)
        ticker.watch(0.3, never_awaited, 0.0, prompt)
        for _ in range(3):
            await prompt.next_send()
            assert prompt.answer is not None
            prompt.answer(True)
        tg.cancel_scope.cancel()
    assert len(excused.sends) >= 3 and len(excused.overdues) >= 2
    assert not prompt.overdues
    # excused: the next ping keeps the interval from the last one sent
    for a, b in itertools.pairwise(excused.sends):
        assert b - a == pytest.approx(0.3, abs=0.05)


async def test_a_pinger_without_a_callback_path_is_awaited_and_a_stopped_one_dropped(
        ) -> None:
    ticker = HealthTicker(slot=SLOT)
    portable = FakePinger(sent=Sent.AWAIT)
    gone = FakePinger(sent=Sent.STOP)
    awaited = 0
    twice = anyio.Event()

    async def ping() -> bool:
        nonlocal awaited
        awaited += 1
        if awaited == 2:
            twice.set()
        return True

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        ticker.watch(0.05, ping, 0.0, portable)
        ticker.watch(0.05, never_awaited, 0.0, gone)
        with anyio.fail_after(5):
            await twice.wait()
        tg.cancel_scope.cancel()
    assert len(portable.sends) >= 2 and not portable.overdues
    assert len(gone.sends) == 1 and ticker.watched == 1


async def test_a_cancelled_watch_with_a_ping_in_flight_is_never_overdue() -> None:
    ticker = HealthTicker(slot=SLOT)
    ending = FakePinger(timeout=0.1)
    steady = FakePinger(timeout=0.1, again_when_overdue=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        watch = ticker.watch(0.2, never_awaited, 0.0, ending)
        ticker.watch(0.2, never_awaited, 0.0, steady)
        await ending.next_send()
        watch.cancel()  # the instance ended with its ping out
        assert ending.answer is not None
        ending.answer(False)  # its connection's local answer, after the cancel
        for _ in range(3):  # the deadline passes, and more
            await steady.next_send()
        tg.cancel_scope.cancel()
    assert len(ending.sends) == 1 and not ending.overdues
    assert ticker.watched == 1


async def test_a_pinger_that_raises_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakePinger):
        def send(self, answered: Callable[[bool], None]) -> Sent:
            raise RuntimeError("a bug in one pinger")

    ticker = HealthTicker(slot=SLOT)
    fine = FakePinger(timeout=0.05, again_when_overdue=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        ticker.watch(0.05, never_awaited, 0.0, Broken())
        ticker.watch(0.05, never_awaited, 0.0, fine)
        for _ in range(3):
            await fine.next_send()
        tg.cancel_scope.cancel()
    assert "a liveness ping failed" in caplog.text
    assert ticker.watched == 1


# ------------------------------------------------------ ConnectionPings, no process


class FakeLink:
    """The part of a Connection that ConnectionPings uses."""

    def __init__(self, callback_path: bool = True) -> None:
        self.closed_error: ErrorObject | None = None
        self.callback_path = callback_path
        self.sent: dict[RequestId, Callable[[Response | ErrorResponse, bool], None]] = {}
        self.forgotten: list[tuple[RequestId, str]] = []
        self._ids = itertools.count(1)

    def request_nowait(self, method: str, params: Any,
                       done: Callable[[Response | ErrorResponse, bool], None]
                       ) -> RequestId | None:
        assert method == "pipevisor/ping" and params == {}
        if not self.callback_path:
            return None
        ident = next(self._ids)
        self.sent[ident] = done
        return ident

    def forget(self, ident: RequestId, reason: str) -> bool:
        self.forgotten.append((ident, reason))
        return self.sent.pop(ident, None) is not None

    def answer(self, answer: Response | ErrorResponse, local: bool = False) -> None:
        ident = max(self.sent)
        self.sent.pop(ident)(answer, local)


class Verdicts:
    def __init__(self, excuse: bool = False) -> None:
        self.excuse = excuse
        self.current = True
        self.unanswered: list[float] = []
        self.faults: list[Exception] = []
        self.answers: list[bool] = []

    def pings(self, link: FakeLink) -> ConnectionPings:
        return ConnectionPings(link, "pipevisor/ping", {}, 5.0,
                               current=lambda: self.current, unanswered=self.judge,
                               fault=self.faults.append)

    def judge(self, sent: float) -> bool:
        self.unanswered.append(sent)
        return self.excuse


def test_connection_pings_answered_errors_included_ping_on() -> None:
    link, v = FakeLink(), Verdicts()
    pings = v.pings(link)
    assert pings.send(v.answers.append) is Sent.SENT
    link.answer(Response(1, {}))
    assert pings.send(v.answers.append) is Sent.SENT
    link.answer(ErrorResponse(2, ErrorObject(-32601, "Method not found")))
    assert v.answers == [True, True] and not v.unanswered and not link.forgotten


def test_connection_pings_a_dead_plugin_stops_them_without_a_hang() -> None:
    link, v = FakeLink(), Verdicts()
    pings = v.pings(link)
    before = time.monotonic()
    pings.send(v.answers.append)
    link.answer(_error(ErrorCode.PLUGIN_CRASHED), local=True)
    assert v.answers == [False] and not v.unanswered
    pings.send(v.answers.append)  # a connection closed with a hang's timeout: judged
    link.answer(_error(ErrorCode.TIMEOUT), local=True)
    assert v.answers == [False, False] and len(v.unanswered) == 1
    assert v.unanswered[0] >= before  # on the throttle's (monotonic) clock


def test_connection_pings_overdue_forgets_the_request_and_asks_the_runner() -> None:
    link, v = FakeLink(), Verdicts(excuse=True)
    pings = v.pings(link)
    pings.send(v.answers.append)
    assert pings.overdue() is True  # the runner excused it (throttled)
    assert link.forgotten == [(1, "timeout")] and len(v.unanswered) == 1
    v.excuse = False
    pings.send(v.answers.append)
    assert pings.overdue() is False
    assert link.forgotten[-1] == (2, "timeout") and not link.sent


def test_connection_pings_stop_with_their_connection_and_await_without_callbacks() -> None:
    v = Verdicts()
    closed = FakeLink()
    closed.closed_error = ErrorObject(ErrorCode.PLUGIN_CRASHED, "gone")
    assert v.pings(closed).send(v.answers.append) is Sent.STOP
    replaced = FakeLink()
    v.current = False  # the runner moved on to another instance's connection
    assert v.pings(replaced).send(v.answers.append) is Sent.STOP and not replaced.sent
    v.current = True
    assert v.pings(FakeLink(callback_path=False)).send(v.answers.append) is Sent.AWAIT


def test_connection_pings_a_bug_of_ours_is_the_instances_fault() -> None:
    class Failing(FakeLink):
        def request_nowait(self, method: str, params: Any,
                           done: Callable[[Response | ErrorResponse, bool], None]
                           ) -> RequestId | None:
            raise RuntimeError("bug")

    v = Verdicts()
    assert v.pings(Failing()).send(v.answers.append) is Sent.STOP
    assert [str(e) for e in v.faults] == ["bug"]


async def test_deadlines_longer_than_the_interval_do_not_pile_up_in_the_heap() -> None:
    """Each answer leaves its deadline behind as a stale entry; with a timeout of a
    hundred intervals, and pings in two phases (so that stale deadlines never reach the
    head of the heap), they would outnumber the watches a hundred to one."""
    ticker = HealthTicker(slot=SLOT)
    pending: list[Callable[[bool], None]] = []
    sent = anyio.Event()

    class Prompt(FakePinger):
        def send(self, answered: Callable[[bool], None]) -> Sent:
            pending.append(answered)
            sent.set()
            return super().send(answered)

    pingers = [Prompt(timeout=100 * 0.02) for _ in range(10)]
    largest = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        for i, p in enumerate(pingers):
            ticker.watch(0.02, never_awaited, 0.01 * (i % 2), p)
        with anyio.fail_after(10):
            while len(pingers[0].sends) < 60:
                await sent.wait()
                sent = anyio.Event()
                while pending:
                    pending.pop()(True)
                largest = max(largest, len(ticker._heap))
        tg.cancel_scope.cancel()
    assert not any(p.overdues for p in pingers)
    assert largest <= 2 * len(pingers) + 64 + len(pingers), largest
