"""Calls through a real supervisor to real plugin processes."""

from __future__ import annotations

import time

import anyio
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    CallPolicy,
    CallTimeout,
    PluginError,
    PluginState,
    PluginUnavailable,
    ProtocolErrorAction,
    QueueFull,
    Supervisor,
)
from pipevisor.supervisor.errors import CallError
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


async def test_call_round_trip_and_status() -> None:
    async with Supervisor([fake_spec()]) as sup:
        assert await sup.call("fake", "echo", {"text": "hi"}, timeout=10) == {"text": "hi"}
        [status] = sup.status()
        assert status["state"] == "ready"
        assert status["protocol_version"] == "1.0"
        assert "echo" in status["methods"]
        assert isinstance(status["pid"], int)


async def test_plugin_error_is_passed_through() -> None:
    async with Supervisor([fake_spec()]) as sup:
        with pytest.raises(PluginError) as info:
            await sup.call("fake", "no_such_method", {}, timeout=10)
        assert info.value.code == ErrorCode.METHOD_NOT_FOUND


async def test_thousand_pipelined_calls_each_get_their_own_answer() -> None:
    results: dict[int, object] = {}
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)

        async def one(i: int) -> None:
            results[i] = await sup.call("fake", "echo", {"i": i, "pad": "x" * (i % 50)})

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, i)
    assert len(results) == 1000
    assert all(results[i] == {"i": i, "pad": "x" * (i % 50)} for i in range(1000))


async def test_calls_started_together_go_out_in_few_writes_and_in_order() -> None:
    """On asyncio, requests made in one loop iteration are joined into one write after
    the first; every one still gets its own answer, and a cancel written right after
    its request still reaches the plugin after it (the plugin then reports it)."""
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        conn = sup.runner("fake").conn
        assert conn is not None and conn._fast is not None
        transport = conn._fast._stdin
        writes: list[int] = []
        real_write = transport.write

        def counting(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            real_write(data)

        transport.write = counting  # type: ignore[method-assign]
        results: dict[int, object] = {}

        async def one(i: int) -> None:
            results[i] = await sup.call("fake", "echo", {"i": i})

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert results == {i: {"i": i} for i in range(200)}
        assert 2 <= len(writes) < 20, writes  # not one write per request
        with pytest.raises(CallTimeout):
            await sup.call("fake", "sleep", {"seconds": 30}, timeout=0.2)
        with anyio.fail_after(10):
            while not await sup.call("fake", "cancelled"):
                await anyio.sleep(0.01)


async def test_timeout_sends_cancel_to_the_plugin() -> None:
    async with Supervisor([fake_spec()]) as sup:
        started = time.monotonic()
        with pytest.raises(CallTimeout) as info:
            await sup.call("fake", "sleep", {"seconds": 30}, timeout=0.3)
        assert time.monotonic() - started < 10
        assert info.value.code == ErrorCode.TIMEOUT
        assert info.value.data["origin"] == "pipevisor"
        # the plugin saw the cancel notification for that request
        with anyio.fail_after(5):
            while not await sup.call("fake", "cancelled"):
                await anyio.sleep(0.01)
        assert sup.runner("fake").status()["in_flight"] == 0


async def test_caller_cancellation_reaches_the_plugin() -> None:
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        with anyio.move_on_after(0.3) as scope:
            await sup.call("fake", "sleep", {"seconds": 30})
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            while not await sup.call("fake", "cancelled"):
                await anyio.sleep(0.01)
        assert sup.runner("fake").status()["in_flight"] == 0


async def test_queue_is_bounded() -> None:
    spec = fake_spec(calls=CallPolicy(timeout=10, max_in_flight=1, max_queued=2))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # one in flight, two queued
                tg.start_soon(sup.call, "fake", "sleep", {"seconds": 0.5})
            runner = sup.runner("fake")
            with anyio.fail_after(5):
                while runner.status()["queued"] < 2:
                    await anyio.sleep(0.01)
            with pytest.raises(QueueFull) as info:
                await sup.call("fake", "echo", {})
            assert info.value.code == ErrorCode.QUEUE_FULL


async def test_plugin_declared_max_concurrency_is_respected() -> None:
    async with Supervisor([fake_spec("fake", "--max-concurrency", "2")]) as sup:
        await sup.wait_ready(timeout=10)
        async with anyio.create_task_group() as calls:
            for _ in range(6):
                calls.start_soon(sup.call, "fake", "sleep", {"seconds": 0.1})
        # counted by the plugin itself: it never had more than two at once, and had two
        assert await sup.call("fake", "max_active") == 2


async def test_plugin_can_call_the_host() -> None:
    async with Supervisor([fake_spec()]) as sup:
        @sup.host_method("add")
        async def add(a: int, b: int) -> int:
            return a + b

        result = await sup.call("fake", "call_host", {"method": "add", "params": {"a": 2, "b": 3}},
                                timeout=10)
        assert result == 5
        missing = await sup.call("fake", "call_host", {"method": "nope", "params": {}})
        assert missing["code"] == ErrorCode.METHOD_NOT_FOUND


async def test_garbage_on_stdout_is_counted_not_fatal() -> None:
    async with Supervisor([fake_spec("fake", "--garbage-at-start")]) as sup:
        async with sup.subscribe() as events:
            assert await sup.call("fake", "garbage", timeout=10) == "ok"
            with anyio.fail_after(5):
                while True:
                    ev = await events.next()
                    if ev.kind == "fault":
                        break
            assert ev.detail["fault"] == "invalid_json"
        runner = sup.runner("fake")
        assert runner.faults >= 1
        assert runner.instance == 1
        assert await sup.call("fake", "echo", [1]) == [1]


async def test_strict_mode_restarts_on_garbage() -> None:
    spec = fake_spec(on_protocol_error=ProtocolErrorAction.RESTART)
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        first_pid = sup.runner("fake").status()["pid"]
        try:
            await sup.call("fake", "garbage", timeout=5)
        except Exception:
            pass  # the answer may or may not arrive before the restart
        with anyio.fail_after(10):
            while sup.runner("fake").instance < 2:
                await anyio.sleep(0.01)
        assert await sup.call("fake", "echo", [2], timeout=10) == [2]
        assert sup.runner("fake").status()["pid"] != first_pid


async def test_huge_line_is_skipped_and_the_plugin_keeps_working() -> None:
    async with Supervisor([fake_spec(max_line_bytes=64 * 1024)]) as sup:
        with pytest.raises(CallTimeout):
            await sup.call("fake", "huge", {"bytes": 1_000_000}, timeout=1.0)
        runner = sup.runner("fake")
        assert runner.faults == 1
        assert runner.conn is not None and runner.conn.peer.buffered <= 64 * 1024
        assert await sup.call("fake", "huge", {"bytes": 1000}) == "y" * 1000


async def test_stderr_flood_keeps_the_supervisor_responsive() -> None:
    async with Supervisor([fake_spec(stderr_lines=500)]) as sup:
        await sup.wait_ready(timeout=10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.call, "fake", "stderr_flood", {"lines": 200_000}, )
            for i in range(50):
                assert await sup.call("fake", "echo", [i], timeout=10) == [i]
        runner = sup.runner("fake")
        assert len(runner.stderr.lines) <= 500
        assert runner.stderr.total >= 200_000


async def test_unknown_plugin() -> None:
    async with Supervisor([]) as sup:
        with pytest.raises(PluginUnavailable) as info:
            await sup.call("ghost", "echo")
        assert info.value.code == ErrorCode.UNKNOWN_PLUGIN


async def test_calls_to_a_stopped_plugin_fail_clearly() -> None:
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        sup.stop("fake")
        await sup.runner("fake").wait_state({PluginState.STOPPED}, 10)
        with pytest.raises(PluginUnavailable) as info:
            await sup.call("fake", "echo")
        assert info.value.code == ErrorCode.PLUGIN_STOPPED
        assert "stopped" in str(info.value)


async def test_plugin_gets_a_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    spec = fake_spec(env={"EXTRA": "1"})
    async with Supervisor([spec]) as sup:
        env = await sup.call("fake", "env", timeout=10)
    assert "SECRET_TOKEN" not in env
    assert env["EXTRA"] == "1"
    assert env["PIPEVISOR_PLUGIN"] == "1"
    assert env["PIPEVISOR_PLUGIN_NAME"] == "fake"
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "EXTRA",
               "PIPEVISOR_PLUGIN", "PIPEVISOR_PLUGIN_NAME", "PIPEVISOR_PROTOCOL",
               "PIPEVISOR_HOST_PID", "PIPEVISOR_TREE"}
    assert set(env) <= allowed, set(env) - allowed


async def test_plugin_inherits_no_extra_file_descriptors() -> None:
    async with Supervisor([fake_spec()]) as sup:
        fds = await sup.call("fake", "fds", timeout=10)
    # 0-2 are the pipes, 3 is the dup of stdout the plugin keeps for the protocol,
    # one more is the directory listing itself; nothing of the supervisor's leaks in
    assert len(fds) <= 5, fds


async def test_plugin_cannot_forge_a_pipevisor_error() -> None:
    """[M-10c]: a local code from a plugin reaches the caller as -32603, original kept."""
    async with Supervisor([fake_spec()]) as sup:
        with pytest.raises(PluginError) as info:
            await sup.call("fake", "reserved_error", timeout=10)
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert info.value.data["reservedCode"] == ErrorCode.PLUGIN_CRASHED
    assert info.value.data["origin"] == "plugin"


async def test_an_embedding_host_sees_memory_and_cpu_in_status() -> None:
    """#18: the usage `pipevisor status` shows came from a second sampler in the control
    server; Supervisor.status_with_usage gives it to embedding hosts too."""
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        (first,) = await sup.status_with_usage()
        assert first["memory_rss"] > 1_000_000 and first["processes"] >= 1
        assert first["cpu_seconds"] is not None
        (again,) = await sup.status_with_usage()
        assert again["cpu_percent"] is not None and again["cpu_percent"] >= 0


async def test_a_timeout_says_the_time_asked_for_not_the_time_left() -> None:
    """#19: "within 0.999988 s" for a call given 1 s."""
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        with pytest.raises(CallTimeout) as info:
            await sup.call("fake", "sleep", {"seconds": 30}, timeout=1)
    assert "within 1 s" in info.value.error.message, info.value.error.message
    assert info.value.data["timeout"] <= 1 and len(str(info.value.data["timeout"])) <= 5


async def test_scalar_params_are_refused_as_invalid_params_and_never_sent() -> None:
    """JSON-RPC 2.0 params are an object or an array (SPEC [M-4.1b]); a scalar is the
    caller's mistake, refused here with a reason rather than sent for a conforming plugin
    to answer -32600. The plugin is not blamed and keeps serving."""
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        for params in (5, "text", 1.5, True):
            with pytest.raises(CallError) as info:
                await sup.call("fake", "echo", params)
            assert info.value.code == ErrorCode.INVALID_PARAMS
            assert "object or an array" in str(info.value)  # the reason, in the message
            assert info.value.data["origin"] == "pipevisor"
        got = await sup.call_many("fake", "echo", [[1], 2, {"a": 3}])
        assert got[0] == [1] and got[2] == {"a": 3}
        assert isinstance(got[1], CallError) and got[1].code == ErrorCode.INVALID_PARAMS
        assert await sup.call("fake", "echo", ["still here"]) == ["still here"]
        assert sup.runner("fake").faults == 0
