"""engine/connection.py driven over an in-memory link, in milliseconds: the portable call
path, ordering, timeouts and their cancels, a plugin that goes away mid-call, junk on
stdout, requests from the plugin and progress routing. The real-pipe suites
(test_calls.py, test_hostile.py) keep covering the asyncio fast path end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import ByteReceiveStream, ByteSendStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipevisor.protocol import ErrorCode, Fault, Notification, local_error
from pipevisor.supervisor.engine.connection import Connection, ConnectionCallbacks
from pipevisor.supervisor.errors import CallError, CallTimeout, PluginCrashed, PluginError

pytestmark = pytest.mark.anyio


class _Out(ByteSendStream):
    def __init__(self, stream: MemoryObjectSendStream[bytes]) -> None:
        self._stream = stream

    async def send(self, item: bytes) -> None:
        try:
            await self._stream.send(bytes(item))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


class _In(ByteReceiveStream):
    def __init__(self, stream: MemoryObjectReceiveStream[bytes]) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stream.receive()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Plugin:
    """The far end of the link: reads the host's lines, writes its own."""

    def __init__(self, to_host: MemoryObjectSendStream[bytes],
                 from_host: MemoryObjectReceiveStream[bytes]) -> None:
        self._out = to_host
        self._in = from_host
        self._pending = b""

    async def line(self) -> dict[str, Any]:
        while b"\n" not in self._pending:
            self._pending += await self._in.receive()
        line, self._pending = self._pending.split(b"\n", 1)
        doc = orjson.loads(line)
        assert isinstance(doc, dict)
        return doc

    async def write(self, data: bytes | dict[str, Any]) -> None:
        await self._out.send(data if isinstance(data, bytes) else orjson.dumps(data) + b"\n")

    async def answer(self, ident: Any, result: Any) -> None:
        await self.write({"jsonrpc": "2.0", "id": ident, "result": result})

    async def hang_up(self) -> None:
        await self._out.aclose()


class Seen:
    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self.faults: list[Fault] = []


@asynccontextmanager
async def linked(host: Callable[[str, Any], Awaitable[Any]] | None = None
                 ) -> AsyncIterator[tuple[Connection, Plugin, Seen, TaskGroup]]:
    to_plugin_send, to_plugin_recv = anyio.create_memory_object_stream[bytes](100)
    to_host_send, to_host_recv = anyio.create_memory_object_stream[bytes](100)
    seen = Seen()

    async def no_host(method: str, params: Any) -> Any:
        raise AssertionError("no host calls expected")

    conn = Connection("mock", _Out(to_plugin_send), _In(to_host_recv),
                      ConnectionCallbacks(seen.notifications.append, seen.faults.append,
                                          host or no_host),
                      max_line_bytes=1 << 16)
    assert conn._fast is None  # memory streams: the portable path
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.read_loop, tg)
        with anyio.fail_after(5):
            yield conn, Plugin(to_host_send, to_plugin_recv), seen, tg
        tg.cancel_scope.cancel()


async def test_answers_out_of_order_reach_their_callers() -> None:
    async with linked() as (conn, plugin, _, tg):
        got: dict[str, Any] = {}
        both = anyio.Event()

        async def call(name: str) -> None:
            got[name] = await conn.call("echo", {"n": name}, 5)
            if len(got) == 2:
                both.set()

        tg.start_soon(call, "a")
        first = await plugin.line()
        tg.start_soon(call, "b")
        second = await plugin.line()
        assert first["params"] == {"n": "a"} and second["params"] == {"n": "b"}
        await plugin.answer(second["id"], "B")
        await plugin.answer(first["id"], "A")
        await both.wait()
        assert got == {"a": "A", "b": "B"}


async def test_a_timeout_tells_the_plugin_and_a_late_answer_is_dropped() -> None:
    async with linked() as (conn, plugin, seen, _):
        with pytest.raises(CallTimeout) as late:
            await conn.call("slow", None, 0.05)
        assert "within 0.05 s" in late.value.error.message
        request = await plugin.line()
        cancel = await plugin.line()
        assert cancel["method"] == "pipevisor/cancel"
        assert cancel["params"]["id"] == request["id"]
        await plugin.answer(request["id"], "too late")  # nobody waits: dropped quietly
        result: list[Any] = []

        async def again() -> None:
            result.append(await conn.call("ping", None, 5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(again)
            ping = await plugin.line()
            await plugin.answer(ping["id"], "pong")
        assert result == ["pong"] and not seen.faults


async def test_the_plugins_error_answer_is_its_own() -> None:
    async with linked() as (conn, plugin, _, tg):
        outcome: list[BaseException] = []
        done = anyio.Event()

        async def call() -> None:
            try:
                await conn.call("boom", None, 5)
            except CallError as exc:
                outcome.append(exc)
            done.set()

        tg.start_soon(call)
        request = await plugin.line()
        # a plugin claiming pipevisor's origin for a local code is not believed
        await plugin.write({"jsonrpc": "2.0", "id": request["id"], "error": {
            "code": ErrorCode.PLUGIN_CRASHED, "message": "fake",
            "data": {"origin": "pipevisor"}}})
        await done.wait()
        assert isinstance(outcome[0], PluginError)


async def test_every_call_in_flight_is_answered_when_the_plugin_goes_away() -> None:
    async with linked() as (conn, plugin, _, tg):
        errors: list[BaseException] = []
        all_answered = anyio.Event()

        async def call(i: int) -> None:
            try:
                await conn.call("work", [i], 5)
            except CallError as exc:
                errors.append(exc)
            if len(errors) == 10:
                all_answered.set()

        for i in range(10):
            tg.start_soon(call, i)
        for _ in range(10):
            await plugin.line()
        await plugin.hang_up()
        await conn.eof.wait()
        conn.close(local_error(ErrorCode.PLUGIN_CRASHED, "it died", plugin="mock"))
        await all_answered.wait()
        assert all(isinstance(e, PluginCrashed) for e in errors)
        with pytest.raises(PluginCrashed):
            await conn.call("after", None, 5)  # and later callers at once


async def test_junk_is_a_fault_and_the_next_line_still_works() -> None:
    async with linked() as (conn, plugin, seen, tg):
        result: list[Any] = []
        done = anyio.Event()

        async def call() -> None:
            result.append(await conn.call("x", None, 5))
            done.set()

        tg.start_soon(call)
        request = await plugin.line()
        await plugin.write(b"this is not json\n")
        await plugin.answer(request["id"], 42)
        await done.wait()
        assert result == [42] and len(seen.faults) == 1
        assert (await plugin.line())["error"]["code"] == ErrorCode.PARSE_ERROR  # SPEC 3.5


async def test_requests_from_the_plugin_are_served_and_answered() -> None:
    async def host(method: str, params: Any) -> Any:
        return {"method": method, "params": params}

    async with linked(host) as (_, plugin, _, _):
        await plugin.write({"jsonrpc": "2.0", "id": "h1", "method": "host.q", "params": [1]})
        answer = await plugin.line()
        assert answer == {"jsonrpc": "2.0", "id": "h1",
                          "result": {"method": "host.q", "params": [1]}}


async def test_progress_reaches_only_the_caller_it_names() -> None:
    async with linked() as (conn, plugin, seen, tg):
        heard: list[dict[str, Any]] = []
        result: list[Any] = []
        done = anyio.Event()

        async def call() -> None:
            result.append(await conn.call("steps", None, 5, heard.append))
            done.set()

        tg.start_soon(call)
        request = await plugin.line()
        for i, ident in enumerate([request["id"], 999, [request["id"]], request["id"]]):
            await plugin.write({"jsonrpc": "2.0", "method": "pipevisor/progress",
                                "params": {"id": ident, "progress": i}})
        await plugin.answer(request["id"], "done")
        await done.wait()
        assert [p["progress"] for p in heard] == [0, 3]
        assert len(seen.notifications) == 4  # each still published as it came
