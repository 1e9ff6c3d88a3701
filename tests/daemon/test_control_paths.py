"""Both ways the control socket is driven, server and AsyncClient alike: from asyncio's
transport callbacks (what the daemon runs) and with anyio streams and reader tasks (any
other backend, forced here by hiding the asyncio loop from both modules). Each test runs
on both, over a real socket to a real control server with real plugins."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest

import pipevisor.supervisor.client.aio
import pipevisor.supervisor.daemon.control
from pipevisor.protocol import ErrorCode
from pipevisor.supervisor.client import AsyncClient, DaemonConnectionLost
from pipevisor.supervisor.errors import CallTimeout, PluginError
from tests.daemon.control_helpers import running, wait_for
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["transport", "stream"])
def link(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "stream":
        monkeypatch.setattr(pipevisor.supervisor.daemon.control, "asyncio_loop", lambda: None)
        monkeypatch.setattr(pipevisor.supervisor.client.aio, "asyncio_loop", lambda: None)
    yield request.param


def _line(ident: Any, method: str, params: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "method": method,
                         "params": params}) + b"\n"


def _cancel(ident: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": "pipevisor/cancel",
                         "params": {"id": ident}}) + b"\n"


class _Lines:
    """JSON lines from a raw connection, one at a time."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def until(self, pred: Any) -> dict[str, Any]:
        with anyio.fail_after(10):
            while True:
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    msg: dict[str, Any] = orjson.loads(line)
                    if pred(msg):
                        return msg
                self.buf += await self.stream.receive()


async def test_calls_and_errors_on_one_connection(sock_dir: str, link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path), AsyncClient(path) as c:
        # answers (and requests) written in one loop iteration are joined into one
        # write: each must still arrive, whole, including the last of a burst
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await c.call("a", "echo", [i])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
        assert results == {i: [i] for i in range(100)}
        with pytest.raises(PluginError) as err:
            await c.call("a", "nope")
        assert err.value.code == ErrorCode.METHOD_NOT_FOUND
        with pytest.raises(CallTimeout):
            await c.call("a", "sleep", {"seconds": 30}, timeout=0.2)
        assert await c.call("a", "echo", ["after"]) == ["after"]


async def test_requests_past_the_bound_wait_in_order_and_all_are_answered(
        sock_dir: str, link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path, max_in_flight=2) as sup:
        stream = await anyio.connect_unix(path)
        lines = _Lines(stream)
        # one write: six requests read at once, two slots
        await stream.send(b"".join(_line(i, "call", {"plugin": "a", "method": "sleep",
                                                       "params": {"seconds": 0.1}})
                                   for i in range(6)))
        await wait_for(lambda: sup.runner("a").status()["in_flight"] == 2)
        answered = [await lines.until(lambda m: "id" in m) for _ in range(6)]
        assert sorted(m["id"] for m in answered) == list(range(6))
        assert all(m["result"] == {"slept": 0.1} for m in answered), answered
        await stream.send(_line(9, "call", {"plugin": "a", "method": "max_active"}))
        assert (await lines.until(lambda m: m.get("id") == 9))["result"] == 2
        await stream.aclose()


async def test_cancel_of_a_request_still_waiting_for_a_slot_answers_at_once(
        sock_dir: str, link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path, max_in_flight=1) as sup:
        stream = await anyio.connect_unix(path)
        lines = _Lines(stream)
        # one write: "late" is read while "busy" holds the only slot, then cancelled
        await stream.send(
            _line("busy", "call", {"plugin": "a", "method": "sleep", "params": {"seconds": 60}})
            + _line("late", "call", {"plugin": "a", "method": "echo", "params": ["never"]})
            + _cancel("late"))
        late = await lines.until(lambda m: m.get("id") == "late")
        assert late["error"]["code"] == ErrorCode.CANCELLED
        assert sup.runner("a").status()["in_flight"] == 1  # "busy" still runs
        await stream.send(_cancel("busy"))
        busy = await lines.until(lambda m: m.get("id") == "busy")
        assert busy["error"]["code"] == ErrorCode.CANCELLED
        # the slot is free again: the connection serves the next request
        await stream.send(_line(3, "call", {"plugin": "a", "method": "echo", "params": [3]}))
        assert (await lines.until(lambda m: m.get("id") == 3))["result"] == [3]
        await stream.aclose()


async def test_closing_the_connection_cancels_running_calls(sock_dir: str, link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup:
        runner = sup.runner("a")
        async with AsyncClient(path) as c, anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(c.call, "a", "sleep", {"seconds": 60})
            await wait_for(lambda: runner.status()["in_flight"] == 3, what="calls in flight")
            tg.cancel_scope.cancel()
        await wait_for(lambda: runner.status()["in_flight"] == 0, what="calls cancelled")
        async with AsyncClient(path) as c:
            assert len(await c.call("a", "cancelled")) == 3  # the plugin was told each time


async def test_daemon_gone_mid_call_raises_connection_lost(sock_dir: str, link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    stop = anyio.Event()

    async def serve(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
        async with running([fake_spec("a")], path) as sup:
            task_status.started(sup)
            await stop.wait()

    async with anyio.create_task_group() as tg:
        sup = await tg.start(serve)
        async with AsyncClient(path) as c:

            async def stop_when_in_flight() -> None:
                await wait_for(lambda: sup.runner("a").status()["in_flight"] == 1)
                stop.set()

            tg.start_soon(stop_when_in_flight)
            with anyio.fail_after(10), pytest.raises(DaemonConnectionLost):
                await c.call("a", "sleep", {"seconds": 60})
            with pytest.raises(DaemonConnectionLost, match="closed the connection"):
                await c.call("a", "echo", [1])


async def test_events_reach_a_subscriber(sock_dir: str, link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup, AsyncClient(path) as c:
        async with c.subscribe(plugins=["a"], kinds=["stderr"]) as lines:
            await c.call("a", "stderr_flood", {"lines": 100})
            got = 0
            with anyio.fail_after(20):
                async for ev in lines:
                    assert ev["line"] == "x" * 100
                    got += 1
                    if got == 100:
                        break
        await sup.wait_ready(timeout=20)
