"""Call gating (engine/call_gate.py): the pure rules, and the gate's queue driven without
a process."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor.engine.call_gate import CallGate, admission, serving_verdict
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.errors import CallError

S = PluginState


@pytest.mark.parametrize("state", [S.READY, S.DEGRADED])
def test_serving_with_an_open_connection_goes(state: PluginState) -> None:
    assert serving_verdict(state, None, True) == "go"


@pytest.mark.parametrize("state", [S.READY, S.DEGRADED])
def test_serving_but_connection_closed_waits_for_the_next_instance(state: PluginState) -> None:
    assert serving_verdict(state, None, False) == "wait"


@pytest.mark.parametrize("state", [S.STARTING, S.HANDSHAKING, S.BACKOFF])
def test_coming_back_waits(state: PluginState) -> None:
    assert serving_verdict(state, None, False) == "wait"
    assert serving_verdict(state, "stop", False) == "wait"


@pytest.mark.parametrize("state", [S.STOPPED, S.FAILED, S.STOPPING])
def test_nothing_will_bring_it_back(state: PluginState) -> None:
    assert serving_verdict(state, None, False) == "unavailable"
    assert serving_verdict(state, "stop", True) == "unavailable"
    assert serving_verdict(state, "close", False) == "unavailable"


@pytest.mark.parametrize("state", [S.STOPPED, S.FAILED, S.STOPPING])
def test_a_pending_start_or_restart_is_waited_for(state: PluginState) -> None:
    assert serving_verdict(state, "start", False) == "wait"
    assert serving_verdict(state, "restart", False) == "wait"


def test_admission() -> None:
    assert admission(free_slots=1, waiting=0, max_queued=0) == "go"
    assert admission(free_slots=3, waiting=99, max_queued=1) == "go"
    assert admission(free_slots=0, waiting=0, max_queued=1) == "queue"
    assert admission(free_slots=0, waiting=1, max_queued=1) == "full"
    assert admission(free_slots=0, waiting=0, max_queued=0) == "full"


async def _enter(gate: CallGate, timeout: float = 5) -> bool:
    return await gate.enter("m", anyio.current_time() + timeout, timeout)


@pytest.mark.anyio
async def test_the_gate_queues_refuses_and_times_out() -> None:
    gate = CallGate("p", max_in_flight=1, max_queued=1)
    assert await _enter(gate) is False  # a free slot: no wait
    got: list[str] = []

    async def queued() -> None:
        assert await _enter(gate) is True
        got.append("through")
        gate.leave()

    async with anyio.create_task_group() as tg:
        tg.start_soon(queued)
        with anyio.fail_after(5):
            while gate.waiting == 0:
                await anyio.lowlevel.checkpoint()
        with pytest.raises(CallError) as full:
            await _enter(gate)
        assert full.value.code == ErrorCode.QUEUE_FULL
        gate.leave()
    assert got == ["through"] and gate.waiting == 0 and gate.in_flight == 0

    await _enter(gate)
    with pytest.raises(CallError) as late:
        await _enter(gate, 0.01)
    assert late.value.code == ErrorCode.TIMEOUT and gate.waiting == 0
    gate.leave()
    assert gate.in_flight == 0


@pytest.mark.anyio
async def test_queued_callers_go_in_order_and_newcomers_do_not_overtake() -> None:
    gate = CallGate("p", max_in_flight=1, max_queued=10)
    await _enter(gate)
    order: list[int] = []

    async def caller(i: int) -> None:
        await _enter(gate)
        order.append(i)
        gate.leave()

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(caller, i)
            with anyio.fail_after(5):
                while gate.waiting < i + 1:
                    await anyio.lowlevel.checkpoint()
        gate.leave()  # handed to caller 0, which hands to 1, ...
    assert order == [0, 1, 2, 3, 4] and gate.in_flight == 0


@pytest.mark.anyio
async def test_try_enter_takes_only_a_free_slot_nobody_waits_for() -> None:
    gate = CallGate("p", max_in_flight=2, max_queued=10)
    assert gate.try_enter() and gate.try_enter()
    assert not gate.try_enter() and gate.in_flight == 2  # full: nothing taken

    async def queued() -> None:
        await _enter(gate)
        gate.leave()

    async with anyio.create_task_group() as tg:
        tg.start_soon(queued)
        with anyio.fail_after(5):
            while gate.waiting < 1:
                await anyio.lowlevel.checkpoint()
        gate.leave()  # handed to the queued caller: still 2 in flight
        assert not gate.try_enter() and gate.in_flight == 2
        gate.leave()
    assert gate.in_flight == 0 and gate.try_enter()


@pytest.mark.anyio
async def test_a_cancelled_caller_passes_a_handed_slot_on() -> None:
    gate = CallGate("p", max_in_flight=1, max_queued=10)
    await _enter(gate)
    second_in = anyio.Event()

    async def second() -> None:
        await _enter(gate)
        second_in.set()
        gate.leave()

    first_scope = anyio.CancelScope()

    async def first() -> None:  # as the runner does: enter, then leave in a finally
        with first_scope:
            await _enter(gate)
            try:
                await anyio.sleep_forever()
            finally:
                gate.leave()

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        with anyio.fail_after(5):
            while gate.waiting < 1:
                await anyio.lowlevel.checkpoint()
        tg.start_soon(second)
        with anyio.fail_after(5):
            while gate.waiting < 2:
                await anyio.lowlevel.checkpoint()
        gate.leave()  # handed to first ...
        first_scope.cancel()  # ... which is cancelled as it takes it
        with anyio.fail_after(5):
            await second_in.wait()
    assert gate.in_flight == 0 and gate.waiting == 0


@pytest.mark.anyio
async def test_resize_takes_the_handshakes_concurrency() -> None:
    gate = CallGate("p", max_in_flight=4, max_queued=0)
    gate.resize(1)
    await _enter(gate)
    with pytest.raises(CallError) as full:
        await _enter(gate)
    assert full.value.code == ErrorCode.QUEUE_FULL
    gate.leave()


@pytest.mark.anyio
async def test_resize_down_lets_calls_in_flight_finish_and_up_wakes_the_queue() -> None:
    gate = CallGate("p", max_in_flight=3, max_queued=10)
    for _ in range(3):
        await _enter(gate)
    gate.resize(1)  # three in flight, the new limit is one
    woke: list[int] = []

    async def caller(i: int) -> None:
        await _enter(gate)
        woke.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, 0)
        tg.start_soon(caller, 1)
        with anyio.fail_after(5):
            while gate.waiting < 2:
                await anyio.lowlevel.checkpoint()
        gate.leave()
        gate.leave()  # two finished: still at the limit of one, nobody may start
        await anyio.lowlevel.checkpoint()
        assert woke == [] and gate.in_flight == 1
        gate.resize(3)  # room for both
    assert sorted(woke) == [0, 1] and gate.in_flight == 3
