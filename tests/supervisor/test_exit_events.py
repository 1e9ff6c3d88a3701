"""Every plugin process that ends publishes one `exit` event: whether it died on its own,
was stopped on request or was killed as hung (a watcher of the event stream must not have
to infer the end of a process from state changes)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pipevisor.supervisor import HealthPolicy, PluginCrashed, PluginState, Supervisor
from pipevisor.supervisor.engine.events import Subscription, SupervisorEvent
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


def _exits_so_far(events: Subscription) -> list[dict[str, Any]]:
    """The `exit` events already queued (the awaited condition made sure they are out)."""
    return [ev.detail for ev in _drain(events) if ev.kind == "exit"]


def _drain(events: Subscription) -> list[SupervisorEvent]:
    queue = events._queue  # read without waiting: what is queued now is what was published
    out = list(queue)
    queue.clear()
    return out


async def test_stop_on_request_publishes_one_exit() -> None:
    sup = Supervisor([])
    async with sup, sup.subscribe() as events:
        await sup.load(fake_spec(), wait=10)
        sup.stop("fake")
        await sup.runner("fake").wait_state({PluginState.STOPPED}, 10)
        exits = _exits_so_far(events)
    assert len(exits) == 1, exits
    assert exits[0]["returncode"] == 0
    assert exits[0]["reason"] == "stopped on request"


async def test_hung_plugin_killed_publishes_one_exit_then_the_new_instance_runs() -> None:
    sup = Supervisor([])
    async with sup, sup.subscribe() as events:
        await sup.load(fake_spec(health=HealthPolicy(ping_interval=0.2, ping_timeout=0.5)),
                       wait=10)
        runner = sup.runner("fake")
        await sup.call("fake", "hang")
        with anyio.fail_after(20):
            while runner.instance < 2 or runner.state is not PluginState.READY:
                await anyio.sleep(0.02)  # polled condition, bounded by the deadline
        exits = _exits_so_far(events)
    assert len(exits) == 1, exits
    assert exits[0]["returncode"] is not None  # it was killed, and the kill was waited for
    assert "liveness ping" in exits[0]["reason"]


async def test_a_crash_publishes_one_exit_not_two() -> None:
    sup = Supervisor([])
    async with sup, sup.subscribe() as events:
        await sup.load(fake_spec(), wait=10)
        runner = sup.runner("fake")
        with pytest.raises(PluginCrashed):
            await sup.call("fake", "crash", {"code": 7})
        assert await sup.call("fake", "echo", [1], timeout=10) == [1]  # instance 2 is up
        exits = _exits_so_far(events)
    assert runner.instance == 2
    assert [e["returncode"] for e in exits] == [7]
    assert "reason" not in exits[0]  # it died on its own, nobody ended it


async def test_unload_publishes_one_exit_per_plugin() -> None:
    sup = Supervisor([])
    async with sup, sup.subscribe() as events:
        await sup.load(fake_spec("a"), wait=10)
        await sup.load(fake_spec("b"), wait=10)
        await sup.unload("a")
        await sup.unload("b")
        exits = [ev for ev in _drain(events) if ev.kind == "exit"]
    assert sorted(ev.plugin for ev in exits) == ["a", "b"]

