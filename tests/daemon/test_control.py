"""The control socket server against a real Supervisor with real plugins, over a real socket."""

from __future__ import annotations

import os
import pathlib
import socket
import stat

import anyio
import orjson
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import Supervisor
from pipevisor.supervisor.client import AsyncClient, ControlError
from pipevisor.supervisor.daemon.control import ControlSocketError, serve_control
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.errors import CallTimeout, PluginCrashed, PluginError, PluginUnavailable
from tests.daemon.control_helpers import FakeHooks, running, wait_for
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


async def _raw(path: str) -> anyio.abc.SocketStream:
    return await anyio.connect_unix(path)


async def _read_until(stream: anyio.abc.SocketStream, pred: object, buf: list[bytes]) -> dict:
    """Read JSON lines until one satisfies ``pred``; returns it."""
    with anyio.fail_after(10):
        while True:
            joined = b"".join(buf)
            while b"\n" in joined:
                line, joined = joined.split(b"\n", 1)
                buf[:] = [joined]
                msg = orjson.loads(line)
                if pred(msg):  # type: ignore[operator]
                    return msg  # type: ignore[no-any-return]
            buf[:] = [joined, await stream.receive()]


async def test_socket_is_owner_only_and_removed_on_exit(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "sub", "control.sock")
    async with running([fake_spec("a")], path):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not os.path.exists(path)


async def test_status_lists_plugins_with_resources(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a"), fake_spec("b")], path), AsyncClient(path) as c:
        status = await c.status()
    assert status["daemon"]["pid"] == os.getpid()
    assert status["daemon"]["version"] == "test"
    by_name = {p["name"]: p for p in status["plugins"]}
    assert set(by_name) == {"a", "b"}
    for p in by_name.values():
        assert p["state"] == "ready"
        assert p["memory_rss"] > 1_000_000
        assert p["cpu_seconds"] >= 0
        assert p["processes"] >= 1


async def test_call_results_and_errors_pass_through(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path), AsyncClient(path) as c:
        assert await c.call("a", "echo", {"x": [1, 2]}) == {"x": [1, 2]}
        with pytest.raises(PluginError) as plugin_err:
            await c.call("a", "nope")
        assert plugin_err.value.code == ErrorCode.METHOD_NOT_FOUND
        assert "no method nope" in plugin_err.value.error.message
        with pytest.raises(PluginUnavailable) as unknown:
            await c.call("ghost", "echo")
        assert unknown.value.code == ErrorCode.UNKNOWN_PLUGIN
        with pytest.raises(CallTimeout):
            await c.call("a", "sleep", {"seconds": 30}, timeout=0.2)
        with pytest.raises(ControlError) as bad:
            await c.request("call", {"plugin": "a"})
        assert bad.value.code == ErrorCode.INVALID_PARAMS
        with pytest.raises(ControlError) as unknown_method:
            await c.request("frobnicate")
        assert unknown_method.value.code == ErrorCode.METHOD_NOT_FOUND


async def test_second_server_on_same_socket_is_refused(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup, AsyncClient(path) as c:
        with pytest.raises(ControlSocketError) as exc:
            await serve_control(sup, path, FakeHooks())
        assert path in str(exc.value)
        assert f"pid {os.getpid()}" in str(exc.value)
        # the first server is untouched
        assert await c.call("a", "echo", ["still here"]) == ["still here"]


async def test_stale_socket_is_replaced_and_a_plain_file_is_refused(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a socket file nobody listens on: what a killed daemon leaves
    dead.close()
    async with running([fake_spec("a")], path), AsyncClient(path) as c:
        assert await c.call("a", "echo", [1]) == [1]
    other = os.path.join(sock_dir, "plain")
    pathlib.Path(other).write_text("not a socket")
    async with Supervisor([]) as sup:
        with pytest.raises(ControlSocketError, match="exists and is not a socket"):
            await serve_control(sup, other, FakeHooks())
    assert pathlib.Path(other).read_text() == "not a socket"


async def test_client_disconnect_mid_call_cancels_the_call(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup:
        runner = sup.runner("a")
        stream = await _raw(path)
        await stream.send(orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "call", "params": {
            "plugin": "a", "method": "sleep", "params": {"seconds": 60}}}) + b"\n")
        await wait_for(lambda: runner.status()["in_flight"] == 1, what="call in flight")
        await stream.aclose()
        await wait_for(lambda: runner.status()["in_flight"] == 0, what="call cancelled")
        async with AsyncClient(path) as c:
            cancelled = await c.call("a", "cancelled")
        assert len(cancelled) == 1  # the plugin was told


async def test_cancelled_async_call_cancels_in_daemon(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup, AsyncClient(path) as c:
        runner = sup.runner("a")
        with anyio.move_on_after(0.3) as scope:
            await c.call("a", "sleep", {"seconds": 60})
        assert scope.cancelled_caught
        await wait_for(lambda: runner.status()["in_flight"] == 0, what="call cancelled")
        assert await c.call("a", "echo", ["ok"]) == ["ok"]  # the connection is still good


async def test_cancel_notification_answers_cancelled(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup:
        stream = await _raw(path)
        await stream.send(orjson.dumps({"jsonrpc": "2.0", "id": "x", "method": "call", "params": {
            "plugin": "a", "method": "sleep", "params": {"seconds": 60}}}) + b"\n")
        await wait_for(lambda: sup.runner("a").status()["in_flight"] == 1)
        await stream.send(b'{"jsonrpc":"2.0","method":"pipevisor/cancel","params":{"id":"x"}}\n')
        answer = await _read_until(stream, lambda m: m.get("id") == "x", [])
        assert answer["error"]["code"] == ErrorCode.CANCELLED
        await stream.aclose()


async def test_in_flight_requests_per_connection_are_bounded(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path, max_in_flight=2), AsyncClient(path) as c:
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(c.call, "a", "sleep", {"seconds": 0.3})
        # every request answered, never more than two at once in the plugin
        assert await c.call("a", "max_active") == 2


async def test_garbage_gets_parse_error_and_connection_survives(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path):
        stream = await _raw(path)
        buf: list[bytes] = []
        await stream.send(b"this is not json\n")
        err = await _read_until(stream, lambda m: "error" in m, buf)
        assert err["error"]["code"] == ErrorCode.PARSE_ERROR and err["id"] is None
        await stream.send(b'{"jsonrpc":"2.0","id":1,"method":"logs","params":{"plugin":"a"}}\n')
        ok = await _read_until(stream, lambda m: m.get("id") == 1, buf)
        assert ok["result"]["plugin"] == "a"
        await stream.aclose()


async def test_lifecycle_load_unload_reload_logs(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    hooks = FakeHooks(loadable={"extra": fake_spec("extra")})
    async with running([fake_spec("a")], path, hooks) as sup, AsyncClient(path) as c:
        pid = sup.runner("a").process.pid  # type: ignore[union-attr]
        restarted = await c.restart("a", wait=20)
        assert restarted["state"] == "ready" and restarted["pid"] != pid
        stopped = await c.stop("a", wait=20)
        assert stopped["state"] == "stopped"
        with pytest.raises(PluginUnavailable):
            await c.call("a", "echo")
        assert (await c.start("a", wait=20))["state"] == "ready"

        loaded = await c.load("extra", wait=20)
        assert loaded["name"] == "extra" and loaded["state"] == "ready"
        assert await c.call("extra", "echo", [5]) == [5]
        with pytest.raises(ControlError, match="no plugin 'nothing'"):
            await c.load("nothing")
        with pytest.raises(ControlError, match="already loaded"):
            await c.load("extra")
        await c.unload("extra")
        assert "extra" not in sup.runners
        assert sup.runner("a").state is PluginState.READY

        assert await c.reload() == {"reloaded": True, "count": 1}

        with pytest.raises(PluginCrashed):
            await c.call("a", "crash", {"code": 3})
        await wait_for(lambda: any("crashing on purpose" in line
                                   for line in sup.runner("a").stderr.last(50)))
        assert any("crashing on purpose" in line for line in await c.logs("a", 50))
        with pytest.raises(ControlError, match="lines"):
            await c.logs("a", -1)
        await sup.runner("a").wait_state({PluginState.READY}, 20)  # restarted after the crash


async def test_events_stream_and_stderr_follow(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a"), fake_spec("b")], path), AsyncClient(path) as c:
        states: list[dict] = []
        async with c.subscribe(plugins=["a"]) as events:
            await c.restart("a")
            with anyio.fail_after(20):
                async for ev in events:
                    assert ev["plugin"] == "a"
                    assert ev["kind"] != "stderr"  # quiet unless asked for
                    if ev["kind"] == "state":
                        states.append(ev)
                        if ev["to"] == "ready":
                            break
        assert [e["to"] for e in states][-1] == "ready", states
        assert "stopped" in [e["to"] for e in states], states

        async with c.subscribe(plugins=["b"], kinds=["stderr"]) as lines:
            await c.call("b", "stderr_flood", {"lines": 100})
            with anyio.fail_after(20):
                got = 0
                async for ev in lines:
                    assert ev["kind"] == "stderr" and ev["line"] == "x" * 100
                    got += 1
                    if got == 100:
                        break


async def test_slow_event_reader_is_told_it_lagged_and_disconnected(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path), AsyncClient(path) as c:
        stream = await _raw(path)
        buf: list[bytes] = []
        await stream.send(b'{"jsonrpc":"2.0","id":1,"method":"subscribe",'
                          b'"params":{"kinds":["stderr"]}}\n')
        await _read_until(stream, lambda m: m.get("id") == 1, buf)
        # we do not read while 30000 lines go by: far more than the queue + socket hold
        assert await c.call("a", "stderr_flood", {"lines": 30000}) == "flooded"
        lagged = await _read_until(
            stream, lambda m: m.get("params", {}).get("kind") == "lagged", buf)
        assert lagged["params"]["count"] > 0 and lagged["params"]["subscription"] == 1
        closing = await _read_until(stream, lambda m: "error" in m, buf)
        assert closing["id"] is None
        assert closing["error"]["data"]["reason"] == "lagged"
        with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
            while True:
                await stream.receive()
        await stream.aclose()
        assert await c.call("a", "echo", [1]) == [1]  # nobody else is affected


async def test_unsubscribe_stops_only_that_subscription(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup:
        stream = await _raw(path)
        buf: list[bytes] = []
        for ident in (1, 2):
            await stream.send(orjson.dumps({"jsonrpc": "2.0", "id": ident,
                                            "method": "subscribe", "params": {}}) + b"\n")
        first = await _read_until(stream, lambda m: m.get("id") == 1, buf)
        second = await _read_until(stream, lambda m: m.get("id") == 2, buf)
        gone, kept = first["result"]["subscription"], second["result"]["subscription"]
        await stream.send(orjson.dumps({"jsonrpc": "2.0", "id": 3, "method": "unsubscribe",
                                        "params": {"subscription": gone}}) + b"\n")
        assert (await _read_until(stream, lambda m: m.get("id") == 3, buf))["result"] == {
            "unsubscribed": True}
        sup.restart("a")
        seen: list[int] = []

        def ready(m: dict) -> bool:
            params = m.get("params") or {}
            seen.append(params.get("subscription"))
            return bool(params.get("to") == "ready")

        await _read_until(stream, ready, buf)
        assert gone not in seen and kept in seen
        await stream.aclose()
        await sup.wait_ready(timeout=20)


async def test_connections_beyond_the_cap_are_told_and_closed(sock_dir: str) -> None:
    """At the cap a new connection is refused ``busy`` when every connection is doing
    something (here: following events)."""
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path, max_connections=1), AsyncClient(path) as c, \
            c.subscribe(kinds=["state"]):
        extra = await _raw(path)
        refusal = await _read_until(extra, lambda m: "error" in m, [])
        assert "all 1 control connections are in use" in refusal["error"]["message"]
        assert refusal["error"]["data"] == {"origin": "control", "reason": "busy"}
        with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
            while True:
                await extra.receive()
        await extra.aclose()


async def test_at_the_cap_the_connection_idle_the_longest_makes_room(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path, max_connections=2) as sup:
        first, second = await _raw(path), await _raw(path)
        buf: list[bytes] = []
        await first.send(b'{"jsonrpc":"2.0","id":1,"method":"logs","params":{"plugin":"a"}}\n')
        await _read_until(first, lambda m: m.get("id") == 1, buf)
        await second.send(b'{"jsonrpc":"2.0","id":1,"method":"logs","params":{"plugin":"a"}}\n')
        await _read_until(second, lambda m: m.get("id") == 1, [])
        async with AsyncClient(path) as c:  # a third: the first (idle longest) leaves
            assert await c.call("a", "echo", [1]) == [1]
        told = await _read_until(first, lambda m: "error" in m, buf)
        assert told["error"]["data"]["reason"] == "evicted"
        with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
            while True:
                await first.receive()
        await first.aclose()
        await second.aclose()
        assert sup.runner("a").state is PluginState.READY


class _OddHooks(FakeHooks):
    def info(self) -> dict:
        return {"odd": object()}  # not JSON


async def test_unencodable_hook_result_is_an_error_not_a_crash(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path, _OddHooks()), AsyncClient(path) as c:
        with pytest.raises(ControlError, match="not encodable") as exc:
            await c.status()
        assert exc.value.code == ErrorCode.INTERNAL_ERROR
        assert await c.call("a", "echo", [1]) == [1]
