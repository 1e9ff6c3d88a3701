"""``Supervisor.call_many``: many calls from one task, each as ``Supervisor.call`` would
end, against real plugin processes (tests/plugins/fake_plugin.py; its ``as`` method
does, per call, what the params say: echo, fail, sleep, crash).

What must hold, whatever the plugin does: one answer per item, in order (a result, or
the item's CallError in its place); the gate's bound on calls in flight; the timeout
per call, with the cancel sent; a crash fails only the calls in flight and the rest go
to the restarted plugin; a cancelled caller leaves nothing in flight; the counters add
up. test_many_lane.py has the waker and the deadline queue on their own.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    CallPolicy,
    CallTimeout,
    PluginCrashed,
    PluginError,
    Supervisor,
)
from pipevisor.supervisor.errors import CallError
from tests.supervisor.fake import fake_spec
from tests.supervisor.test_pipes_fast_path import fast_path_in_use

pytestmark = pytest.mark.anyio


def do(method: str, params: Any = None) -> dict[str, Any]:
    return {"method": method, "params": params}


def calls_counted(sup: Supervisor, name: str = "fake") -> tuple[int, int]:
    runner = sup.runner(name)
    return runner.calls_ok, sum(runner.call_failures.values())


async def test_results_in_order_match_call_one_by_one() -> None:
    items = [do("echo", {"i": i}) for i in range(300)]
    items[7] = do("no_such_method")
    items[150] = do("echo", {"not json": {1, 2}})  # refused before it is sent
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        conn = sup.runner("fake").conn
        assert conn is not None and fast_path_in_use(conn)
        ok0, failed0 = calls_counted(sup)
        got = await sup.call_many("fake", "as", items, window=16)
        one_by_one: list[Any] = []
        for item in items[:10] + items[148:152]:
            try:
                one_by_one.append(await sup.call("fake", "as", item))
            except CallError as exc:
                one_by_one.append(exc)
        ok1, failed1 = calls_counted(sup)
        assert sup.runner("fake").gate.in_flight == 0
    assert len(got) == len(items)
    for i, result in enumerate(got):
        if i in (7, 150):
            continue
        assert result == {"i": i}
    assert isinstance(got[7], PluginError) and got[7].code == ErrorCode.METHOD_NOT_FOUND
    assert got[150].code == ErrorCode.INVALID_PARAMS
    # the same answers as call() gives, errors included
    for mine, theirs in zip(got[:10] + got[148:152], one_by_one, strict=True):
        if isinstance(theirs, CallError):
            assert type(mine) is type(theirs) and mine.code == theirs.code
        else:
            assert mine == theirs
    assert (ok1 - ok0, failed1 - failed0) == (298 + 12, 2 + 2)


async def test_window_and_gate_bound_the_calls_in_flight() -> None:
    spec = fake_spec(calls=CallPolicy(timeout=10.0, max_in_flight=3))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        gate = sup.runner("fake").gate
        most = 0
        done = anyio.Event()

        async def watch() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, gate.in_flight)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            got = await sup.call_many("fake", "sleep", [{"seconds": 0.05}] * 12, window=8)
            # a plain call still gets its turn while a batch holds the gate
            assert await sup.call("fake", "echo", ["alone"]) == ["alone"]
            done.set()
        assert got == [{"slept": 0.05}] * 12
        assert await sup.call("fake", "max_active") == 3  # the plugin never saw more
        assert most <= 3
        two = await sup.call_many("fake", "sleep", [{"seconds": 0.05}] * 4, window=1)
        assert two == [{"slept": 0.05}] * 4
        assert gate.in_flight == 0


async def test_a_call_over_its_timeout_fails_alone_and_is_cancelled_at_the_plugin() -> None:
    items = [do("echo", i) for i in range(20)]
    items[5] = do("sleep", {"seconds": 30})
    items[12] = do("sleep", {"seconds": 30})
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        with anyio.fail_after(10):
            got = await sup.call_many("fake", "as", items, timeout=0.5, window=4)
        for i in range(20):
            if i in (5, 12):
                assert isinstance(got[i], CallTimeout), got[i]
                assert "within 0.5 s" in str(got[i])
            else:
                assert got[i] == i
        with anyio.fail_after(5):
            while len(await sup.call("fake", "cancelled")) < 2:
                await anyio.sleep(0.02)
        assert sup.runner("fake").gate.in_flight == 0


async def test_a_crash_fails_the_calls_in_flight_and_the_rest_reach_the_restarted_plugin(
) -> None:
    items = [do("echo", i) for i in range(200)]
    items[60] = do("crash", {"code": 9})
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        tracker = sup.runner("fake").tracker
        restarts = tracker.total_restarts
        with anyio.fail_after(20):
            got = await sup.call_many("fake", "as", items, window=8)
        crashed = [i for i, r in enumerate(got) if isinstance(r, PluginCrashed)]
        assert 60 in crashed
        assert len(crashed) <= 8, crashed  # only what was in flight with it
        assert all(got[i] == i for i in range(200) if i not in crashed)
        assert min(crashed) >= 60 - 8, crashed
        assert tracker.total_restarts == restarts + 1
        # the lane serves the new instance too
        assert await sup.call_many("fake", "echo", [[1], [2]]) == [[1], [2]]
        assert sup.runner("fake").gate.in_flight == 0


async def test_cancelling_the_caller_cancels_what_is_in_flight() -> None:
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        failed0 = calls_counted(sup)[1]
        with anyio.move_on_after(0.3) as scope:
            await sup.call_many("fake", "sleep", [{"seconds": 30}] * 10, window=4)
        assert scope.cancelled_caught
        assert sup.runner("fake").gate.in_flight == 0
        with anyio.fail_after(5):
            while len(await sup.call("fake", "cancelled")) < 4:
                await anyio.sleep(0.02)
        assert len(await sup.call("fake", "cancelled")) == 4  # the 6 unsent never went
        assert calls_counted(sup)[1] - failed0 == 4
        assert sup.runner("fake").call_failures["cancelled"] >= 4


async def test_calls_wait_for_a_plugin_that_is_still_starting() -> None:
    spec = fake_spec("fake", "--slow-start", "0.5")
    async with Supervisor([spec]) as sup:
        with anyio.fail_after(20):
            got = await sup.call_many("fake", "echo", [[i] for i in range(50)], window=8)
        assert got == [[i] for i in range(50)]
        conn = sup.runner("fake").conn
        assert conn is not None and fast_path_in_use(conn)


async def test_a_batch_larger_than_the_queue_is_not_refused() -> None:
    # window 1, max_queued 0: call_many never queues more than one call at a time
    spec = fake_spec(calls=CallPolicy(timeout=10.0, max_in_flight=2, max_queued=0))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        got = await sup.call_many("fake", "echo", [[i] for i in range(500)])
    assert got == [[i] for i in range(500)]


async def test_a_hostile_plugin_gets_one_answer_per_call_and_no_more() -> None:
    """Doubled answers, answers to ids never sent, junk between them: the batch still
    ends with exactly one answer per call, and the supervisor keeps serving."""
    code = r"""
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg or "method" not in msg:
        continue
    if msg["method"] == "pipevisor/handshake":
        out = {"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": "1.0", "plugin": {"name": "hostile", "version": "0"},
            "methods": {}}}
        sys.stdout.write(json.dumps(out) + "\n"); sys.stdout.flush(); continue
    ident = msg["id"]
    answer = json.dumps({"jsonrpc": "2.0", "id": ident, "result": ident})
    forged = json.dumps({"jsonrpc": "2.0", "id": 10**9 + ident, "result": "forged"})
    sys.stdout.write(answer + "\n" + "junk{\n" + forged + "\n" + answer + "\n")
    sys.stdout.flush()
"""
    spec = replace(fake_spec(), name="hostile", command=(sys.executable, "-c", code))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        with anyio.fail_after(20):
            got = await sup.call_many("hostile", "x", [None] * 100, window=10)
        assert len(got) == 100
        assert all(isinstance(r, int) for r in got), [r for r in got if not isinstance(r, int)]
        assert len(set(got)) == 100  # each call its own answer
        assert sup.runner("hostile").gate.in_flight == 0
        assert isinstance(await sup.call("hostile", "x"), int)


async def test_bad_arguments_are_refused_before_any_call() -> None:
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        ok0, failed0 = calls_counted(sup)
        with pytest.raises(TypeError):
            await sup.call_many("fake", "echo", "abc")
        with pytest.raises(TypeError):
            await sup.call_many("fake", "echo", {"a": 1})
        with pytest.raises(ValueError):
            await sup.call_many("fake", "echo", [1], window=0)
        with pytest.raises(CallError) as info:
            await sup.call_many("fake", "pipevisor/shutdown", [None])
        assert info.value.code == ErrorCode.METHOD_UNAVAILABLE
        with pytest.raises(CallError):
            await sup.call_many("nobody", "echo", [None])
        assert await sup.call_many("fake", "echo", []) == []
        assert await sup.call_many("fake", "echo", iter([[1], [2]])) == [[1], [2]]
        assert calls_counted(sup) == (ok0 + 2, failed0)



async def test_our_own_bug_mid_batch_still_answers_every_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault in pipevisor's own lane (here: the deadline queue raising on the 50th
    call) is handled as Supervisor.call handles one: the instance ends and is restarted,
    the calls in flight get an error that says pipevisor failed, the rest are served."""
    from pipevisor.supervisor.io import pipes

    real_add = pipes.FifoDeadlines.add
    added = 0

    def failing_add(self: pipes.FifoDeadlines, deadline: float, key: Any, waiting: int) -> None:
        nonlocal added
        added += 1
        if added == 50:
            raise RuntimeError("injected bug")
        real_add(self, deadline, key, waiting)

    monkeypatch.setattr(pipes.FifoDeadlines, "add", failing_add)
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        tracker = sup.runner("fake").tracker
        restarts = tracker.total_restarts
        with anyio.fail_after(20):
            got = await sup.call_many("fake", "echo", [[i] for i in range(200)], window=8)
        failed = [i for i, r in enumerate(got) if isinstance(r, CallError)]
        assert failed, got
        # the 8 in flight in the lane, and at most one per worker that went on through
        # Supervisor.call before the ending instance closed its connection (call()'s own
        # behaviour: calls sent to an instance that is ending get its error)
        assert len(failed) <= 2 * 8, [(i, str(got[i])) for i in failed]
        assert all("pipevisor failed" in str(got[i]) for i in failed), [got[i] for i in failed]
        assert all(got[i] == [i] for i in range(200) if i not in failed)
        assert tracker.total_restarts == restarts + 1
        assert sup.runner("fake").gate.in_flight == 0


_HANDSHAKE_THEN = r"""
import json, os, sys, time
line = sys.stdin.buffer.readline()
msg = json.loads(line)
sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
    "protocolVersion": "1.0", "plugin": {"name": "p", "version": "0"}, "methods": {}}}) + "\n")
sys.stdout.flush()
"""
NEVER_READS = _HANDSHAKE_THEN + "time.sleep(3600)\n"
READS_SLOWLY = _HANDSHAKE_THEN + r"""
buf = b""
while True:
    chunk = os.read(0, 16384)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        msg = json.loads(line)
        if "id" in msg and "method" in msg:
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                         "result": len(line)}) + "\n")
    sys.stdout.flush()
    time.sleep(0.002)
"""


async def _most_queued(sup: Supervisor, name: str, work: Any) -> tuple[Any, int]:
    """Run ``work()`` while sampling how many bytes wait in the plugin's stdin pipe."""
    conn = sup.runner(name).conn
    assert conn is not None and conn.pipes is not None
    pipes = conn.pipes
    most = 0
    result: Any = None

    async def sample() -> None:
        nonlocal most
        while True:
            most = max(most, pipes.queued())
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        result = await work()
        tg.cancel_scope.cancel()
    return result, most


@pytest.mark.parametrize("how", ["call_many", "call"])
async def test_a_plugin_that_stops_reading_costs_the_window_not_the_list(how: str) -> None:
    """A plugin that never reads its stdin again: calls whose turn comes wait for it,
    within their timeout, and fail unsent, instead of the host queueing every request
    (before: 100 x 64 KiB = 6.4 MB held for a plugin that would never read them)."""
    spec = replace(fake_spec(), name="deaf", command=(sys.executable, "-c", NEVER_READS))
    params = {"pad": "y" * 65536}
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)

        async def many() -> list[Any]:
            return await sup.call_many("deaf", "x", [params] * 100, timeout=0.2, window=8)

        async def calls() -> list[Any]:
            out: list[Any] = []

            async def worker() -> None:
                for _ in range(100 // 8):
                    try:
                        out.append(await sup.call("deaf", "x", params, timeout=0.2))
                    except CallError as exc:
                        out.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(worker)
            return out

        with anyio.fail_after(30):
            got, most = await _most_queued(sup, "deaf", many if how == "call_many" else calls)
        assert all(isinstance(r, CallTimeout) for r in got), got
        unsent = [r for r in got if "was not sent" in str(r)]
        assert len(unsent) >= len(got) - 2 * 8, len(unsent)
        assert most < 8 * 70_000 + 300_000, most  # the window's worth, not the list's
        assert sup.runner("deaf").gate.in_flight == 0


async def test_a_plugin_that_reads_slowly_gets_every_call() -> None:
    spec = replace(fake_spec(), name="slow", command=(sys.executable, "-c", READS_SLOWLY))
    items = [{"pad": "z" * 32768, "i": i} for i in range(200)]
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        with anyio.fail_after(60):
            got, most = await _most_queued(
                sup, "slow", lambda: sup.call_many("slow", "x", items, timeout=20, window=16))
        assert all(isinstance(r, int) and r > 32768 for r in got), [
            r for r in got if not isinstance(r, int)][:3]
        assert most < 16 * 40_000 + 300_000, most
