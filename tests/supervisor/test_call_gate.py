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


@pytest.mark.anyio
async def test_the_gate_queues_refuses_and_times_out() -> None:
    gate = CallGate("p", max_in_flight=1, max_queued=1)
    held = await gate.enter("m", anyio.current_time() + 5, 5)
    got: list[str] = []

    async def queued() -> None:
        slots = await gate.enter("m", anyio.current_time() + 5, 5)
        got.append("through")
        slots.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(queued)
        with anyio.fail_after(5):
            while gate.waiting == 0:
                await anyio.lowlevel.checkpoint()
        with pytest.raises(CallError) as full:
            await gate.enter("m", anyio.current_time() + 5, 5)
        assert full.value.code == ErrorCode.QUEUE_FULL
        held.release()
    assert got == ["through"] and gate.waiting == 0

    held = await gate.enter("m", anyio.current_time() + 5, 5)
    with pytest.raises(CallError) as late:
        await gate.enter("m", anyio.current_time() + 0.01, 0.01)
    assert late.value.code == ErrorCode.TIMEOUT and gate.waiting == 0
    held.release()


@pytest.mark.anyio
async def test_resize_takes_the_handshakes_concurrency() -> None:
    gate = CallGate("p", max_in_flight=4, max_queued=0)
    gate.resize(1)
    first = await gate.enter("m", anyio.current_time() + 5, 5)
    with pytest.raises(CallError) as full:
        await gate.enter("m", anyio.current_time() + 5, 5)
    assert full.value.code == ErrorCode.QUEUE_FULL
    first.release()
