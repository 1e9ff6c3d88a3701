"""Idle connections of the control socket, in process, over real sockets with real plugins
(issue #13, item 6): closed after the timeout and told why, what is never idle kept,
clients that reconnect on their own. Each runs on both ways a connection is driven."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest

import pipevisor.supervisor.client.aio
import pipevisor.supervisor.daemon.control
from pipevisor.supervisor import Supervisor
from pipevisor.supervisor.client import AsyncClient, Client
from pipevisor.supervisor.daemon.control import ControlLimits, serve_control
from tests.daemon.control_helpers import FakeHooks
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["transport", "stream"])
def link(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "stream":
        monkeypatch.setattr(pipevisor.supervisor.daemon.control, "asyncio_loop", lambda: None)
        monkeypatch.setattr(pipevisor.supervisor.client.aio, "asyncio_loop", lambda: None)
    yield request.param


@asynccontextmanager
async def serving(path: str, limits: ControlLimits, *specs: Any) -> AsyncIterator[Supervisor]:
    async with Supervisor(list(specs) or [fake_spec("a")]) as sup, \
            anyio.create_task_group() as tg:
        await sup.wait_ready(timeout=20)
        await tg.start(lambda task_status: serve_control(
            sup, path, FakeHooks(), limits=limits, task_status=task_status))
        try:
            yield sup
        finally:
            tg.cancel_scope.cancel()


class Raw:
    """A raw client connection: JSON lines in, the end of the stream noticed."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, path: str) -> Raw:
        return cls(await anyio.connect_unix(path))

    async def send(self, ident: int, method: str, params: Any = None) -> None:
        await self.stream.send(orjson.dumps({"jsonrpc": "2.0", "id": ident, "method": method,
                                             "params": params or {}}) + b"\n")

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            try:
                self.buf += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = orjson.loads(line)
        return msg

    async def until(self, pred: Any) -> dict[str, Any]:
        while True:
            msg = await self.next()
            assert msg is not None, "closed by the daemon"
            if pred(msg):
                return msg

    async def rest(self) -> list[dict[str, Any]]:
        """Everything until the daemon closes the connection."""
        seen = []
        while (msg := await self.next()) is not None:
            seen.append(msg)
        return seen


# ============================================================ idle connections


async def test_idle_connections_are_closed_and_told_why(sock_dir: str, link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with serving(path, ControlLimits(idle_timeout=0.5)):
        with anyio.fail_after(10):
            silent = await Raw.open(path)
            dribbler = await Raw.open(path)
            started = anyio.current_time()

            async def dribble() -> None:
                for _ in range(100):  # one byte of an unfinished line every 50 ms
                    try:
                        await dribbler.stream.send(b"{")
                    except (anyio.BrokenResourceError, ConnectionError, anyio.ClosedResourceError):
                        return
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(dribble)
                told = await silent.rest()
                took = anyio.current_time() - started
                assert [m["error"]["data"]["reason"] for m in told] == ["idle"]
                assert "idle" in told[0]["error"]["message"]
                assert 0.4 < took < 3, took
                assert [m["error"]["data"]["reason"] for m in await dribbler.rest()] == [
                    "idle"]
                assert anyio.current_time() - started < 3
            await silent.stream.aclose()
            await dribbler.stream.aclose()


async def test_subscribers_and_calls_in_flight_are_never_idle(sock_dir: str,
                                                             link: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with serving(path, ControlLimits(idle_timeout=0.3)):
        with anyio.fail_after(20):
            follower = await Raw.open(path)
            await follower.send(1, "subscribe", {"kinds": ["state"]})
            await follower.until(lambda m: m.get("id") == 1)
            caller = await Raw.open(path)
            await caller.send(1, "call", {"plugin": "a", "method": "sleep",
                                          "params": {"seconds": 1.2}})
            answer = await caller.until(lambda m: m.get("id") == 1)
            assert answer["result"] == {"slept": 1.2}  # 4 x the idle timeout, not cut
            # the follower, silent all along, is still served
            await follower.send(2, "logs", {"plugin": "a", "lines": 1})
            assert (await follower.until(lambda m: m.get("id") == 2))["result"]["plugin"] == "a"
            # once it has answered, the caller is idle like any other
            told = await caller.rest()
            assert [m["error"]["data"]["reason"] for m in told] == ["idle"]
            await follower.stream.aclose()
            await caller.stream.aclose()


async def test_clients_reconnect_after_an_idle_close(sock_dir: str, link: str) -> None:
    """A host application keeps a client for hours between calls: the daemon closing the
    idle connection must not turn its next call into an error."""
    path = os.path.join(sock_dir, "c.sock")
    async with serving(path, ControlLimits(idle_timeout=0.2)) as sup:
        async with AsyncClient(path) as c:
            assert await c.call("a", "echo", [1]) == [1]
            await anyio.sleep(0.6)  # the daemon closes it meanwhile
            assert await c.call("a", "echo", [2]) == [2]

        def blocking() -> list[Any]:
            import time
            with Client(path) as client:
                first = client.call("a", "echo", [3])
                time.sleep(0.6)
                return [first, client.call("a", "echo", [4])]

        assert await anyio.to_thread.run_sync(blocking) == [[3], [4]]
        assert sup.runner("a").status()["in_flight"] == 0
