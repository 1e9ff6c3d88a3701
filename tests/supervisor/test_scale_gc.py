"""gc.freeze() of the long-lived heap (issue 20): frozen once plugins have started,
unfrozen, collected and refrozen after an unload so the unloaded plugin's objects are
still collected, and unfrozen when the supervisor is left. Real plugins; the pause
itself is measured in perf (perf/cases/scale.py), not asserted here."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import anyio
import pytest

from pipevisor.supervisor import Supervisor
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def nothing_frozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def next_pass(sup: Supervisor, passes: int) -> None:
    with anyio.fail_after(30):
        while sup.heap.passes <= passes:
            await sup.heap.done.wait()


async def test_heap_frozen_after_start_refrozen_after_unload_released_at_exit() -> None:
    async with Supervisor([fake_spec(f"p{i}") for i in range(3)]) as sup:
        await sup.wait_ready(timeout=30)
        await next_pass(sup, 0)
        assert gc.get_freeze_count() > 0
        assert sup.heap.collections == 0  # after a start, freezing alone: no pause

        assert sup.heap.enabled  # the default: this supervisor manages the collector
        runner = weakref.ref(sup.runner("p1"))
        await sup.unload("p1")
        passes = sup.heap.passes
        gc.collect()
        # frozen: the runner's reference cycles are out of the collector's reach ...
        assert runner() is not None
        await next_pass(sup, passes)
        # ... until the pass after the unload, which unfreezes and collects first
        assert runner() is None
        assert sup.heap.collections == 1
        assert await sup.call("p0", "echo", [1], timeout=10) == [1]
    assert gc.get_freeze_count() == 0


async def test_freeze_heap_false_leaves_the_collector_alone() -> None:
    async with Supervisor([fake_spec("p")], freeze_heap=False) as sup:
        await sup.wait_ready(timeout=30)
        sup.heap.changed()
        # decided on entry, so nothing to wait for: no freezer task was started at all
        assert not sup.heap.enabled
        assert sup.heap.passes == 0
        assert gc.get_freeze_count() == 0


async def test_a_host_that_froze_its_heap_itself_is_left_alone() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    async with Supervisor([fake_spec("p")]) as sup:
        await sup.wait_ready(timeout=30)
        sup.heap.changed()
        # decided on entry, so nothing to wait for: no freezer task was started at all
        assert not sup.heap.enabled
        assert sup.heap.passes == 0
    # still frozen (a few frozen objects may have been freed by reference counting)
    assert gc.get_freeze_count() > frozen // 2
