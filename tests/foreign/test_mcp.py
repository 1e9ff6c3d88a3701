"""The MCP preset against a real process (tests/plugins/mcp_like.py) over real pipes:
initialize with version negotiation, ready (not degraded), cancel reaching the server,
liveness by ping (SIGSTOP), the server's log, its requests to the host, its errors."""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.supervisor import HealthPolicy, PluginSpec, Supervisor
from pipevisor.supervisor.engine.config import PluginMode, Preset, ServerPolicy
from pipevisor.supervisor.engine.presets import MCP_VERSIONS
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.errors import CallError, CallTimeout, PluginError
from tests.foreign.helpers import read_record, stopped, wait_for, wait_recorded
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

MCP_LIKE = str(Path(__file__).resolve().parent.parent / "plugins" / "mcp_like.py")


def mcp(name: str, *flags: str, **overrides: Any) -> PluginSpec:
    overrides.setdefault("preset", Preset.MCP)
    return replace(fake_spec(name), command=(sys.executable, MCP_LIKE, *flags), **overrides)


def host_pid(sup: Supervisor) -> int:
    """The server's pid as the host sees it (inside its pid namespace it is another)."""
    pid = sup.status()[0]["pid"]
    assert isinstance(pid, int) and pid > 1
    return pid


async def test_initialize_negotiates_and_the_server_is_ready_not_degraded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = tmp_path / "in.jsonl"
    caplog.set_level(logging.INFO)
    async with Supervisor([mcp("m", "--record", str(record))]) as sup:
        runner = sup.runner("m")
        assert runner.spec.mode is PluginMode.RAW  # the preset implies it
        await runner.wait_state({PluginState.READY}, 10)
        status = sup.status()[0]
        assert status["state"] == "ready" and status["mode"] == "raw"
        assert status["preset"] == "mcp" and status["degradations"] == []
        assert status["server"]["protocolVersion"] == MCP_VERSIONS[0]
        assert status["server"]["serverInfo"] == {"name": "mcp-like", "version": "0.1"}
        assert status["server"]["capabilities"]["tools"] == {}
        assert status["max_in_flight"] == 1  # the documented safe default
        result = await sup.call("m", "tools/call", {"name": "echo",
                                                    "arguments": {"text": "hi"}})
        assert result["content"][0]["text"] == "hi"
    sent = read_record(record)
    assert [m.get("method") for m in sent[:2]] == ["initialize", "notifications/initialized"]
    init = sent[0]["params"]
    assert init["protocolVersion"] == MCP_VERSIONS[0]
    assert init["clientInfo"]["name"] == "pipevisor" and init["capabilities"] == {}
    assert not any(r.levelname == "WARNING" and "raw mode" in r.message
                   for r in caplog.records)


async def test_a_counter_offer_pipevisor_supports_is_accepted() -> None:
    async with Supervisor([mcp("m", "--versions", "2024-11-05")]) as sup:
        await sup.runner("m").wait_state({PluginState.READY}, 10)
        assert sup.status()[0]["server"]["protocolVersion"] == "2024-11-05"


async def test_a_counter_offer_pipevisor_does_not_speak_fails_clearly() -> None:
    async with Supervisor([mcp("m", "--versions", "1999-01-01")]) as sup:
        runner = sup.runner("m")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert "1999-01-01" in (runner.reason or "") and "no common" in (runner.reason or "")
        assert runner.tracker.total_restarts == 0  # a restart cannot help


async def test_without_the_preset_an_sdk_like_server_is_pointed_at_it() -> None:
    """Item 6: such a server answers the handshake -32602; the failed start says what
    to configure."""
    spec = mcp("m", preset=Preset.NONE, mode=PluginMode.AUTO,
               restart=replace(fake_spec().restart, max_restarts=0))
    async with Supervisor([spec]) as sup:
        runner = sup.runner("m")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert 'preset = "mcp"' in (runner.reason or "")


async def test_a_timed_out_call_is_cancelled_with_notifications_cancelled(
        tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    async with Supervisor([mcp("m", "--record", str(record))]) as sup:
        with pytest.raises(CallTimeout):
            await sup.call("m", "tools/call", {"name": "sleep", "arguments": {"seconds": 30}},
                           timeout=0.5)
        cancel = await wait_recorded(record, "notifications/cancelled", 5)
        sleep = next(m for m in read_record(record) if m.get("method") == "tools/call")
        assert cancel["params"] == {"requestId": sleep["id"], "reason": "timeout"}
        assert not any(m.get("method") == "pipevisor/cancel" for m in read_record(record))
        # the server stopped the work: the one slot is free again at once
        result = await sup.call("m", "tools/call", {"name": "echo",
                                                    "arguments": {"text": "next"}}, timeout=5)
        assert result["content"][0]["text"] == "next"


async def test_a_caller_cancelling_sends_the_reason(tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    async with Supervisor([mcp("m", "--record", str(record))]) as sup:
        await sup.wait_ready(timeout=10)
        with anyio.move_on_after(0.5):
            await sup.call("m", "tools/call", {"name": "sleep", "arguments": {"seconds": 30}})
        cancel = await wait_recorded(record, "notifications/cancelled", 5)
        assert cancel["params"]["reason"] == "cancelled by the caller"


async def test_a_stopped_server_is_found_by_ping_and_restarted(tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    health = HealthPolicy(handshake_timeout=10, ping_interval=0.2, ping_timeout=0.5)
    async with Supervisor([mcp("m", "--record", str(record), health=health)]) as sup:
        runner = sup.runner("m")
        await runner.wait_state({PluginState.READY}, 10)
        await wait_recorded(record, "ping", 5)  # pings go out while it is well
        pid = host_pid(sup)
        with stopped(pid):
            await wait_for(lambda: runner.instance == 2 and runner.state is PluginState.READY,
                           15, "a restart after the missed ping")
        assert runner.last_exit is not None
        assert host_pid(sup) != pid
        # the replayed initialize came first on the new instance too
        methods = [m.get("method") for m in read_record(record)]
        assert methods.count("initialize") == 2


async def test_sigkill_then_calls_again_after_the_replayed_initialize(tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    async with Supervisor([mcp("m", "--record", str(record))]) as sup:
        await sup.wait_ready(timeout=10)
        os.kill(host_pid(sup), signal.SIGKILL)
        runner = sup.runner("m")
        await wait_for(lambda: runner.instance == 2 and runner.state is PluginState.READY,
                       10, "the restart")
        result = await sup.call("m", "tools/list", timeout=10)
        assert [t["name"] for t in result["tools"]] == ["echo", "sleep"]
        assert sup.runner("m").instance == 2
        methods = [m.get("method") for m in read_record(record)]
        assert methods.count("initialize") == 2
        assert methods.count("notifications/initialized") == 2


async def test_the_servers_log_reaches_the_daemon_log_at_its_level(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with Supervisor([mcp("m")]) as sup:
        await sup.call("m", "log", {"level": "error", "logger": "db", "data": "disk full"})
        await sup.call("m", "log", {"level": "debug", "data": {"rows": 3}})
        records = [r for r in caplog.records if r.name == "pipevisor.plugin.m"]
        await wait_for(lambda: len([r for r in caplog.records
                                    if r.name == "pipevisor.plugin.m"]) >= 2, 5, "log lines")
        records = [r for r in caplog.records if r.name == "pipevisor.plugin.m"]
        assert ("ERROR", "db: disk full") in [(r.levelname, r.getMessage()) for r in records]
        assert ("DEBUG", '{"rows":3}') in [(r.levelname, r.getMessage()) for r in records]


async def test_concurrency_is_one_by_default_and_configurable() -> None:
    calls = [{"name": "sleep", "arguments": {"seconds": 0.2}}] * 4
    async with Supervisor([mcp("one"), mcp("four", server=ServerPolicy(max_in_flight=4))]) \
            as sup:
        for name in ("one", "four"):
            async with anyio.create_task_group() as tg:
                for params in calls:
                    tg.start_soon(sup.call, name, "tools/call", params)
        assert await sup.call("one", "concurrency") == 1
        assert await sup.call("four", "concurrency") == 4


@pytest.mark.parametrize("code", [-31002, -31000, -32603, 7])
async def test_the_servers_errors_pass_through_untouched(code: int) -> None:
    error = {"code": code, "message": "the server's own", "data": {"origin": "server"}}
    async with Supervisor([mcp("m")]) as sup:
        with pytest.raises(CallError) as info:
            await sup.call("m", "fail", error)
        assert type(info.value) is PluginError
        assert info.value.error.to_json() == error


async def test_a_servers_error_cannot_pass_for_pipevisors() -> None:
    error = {"code": -31002, "message": "fake timeout", "data": {"origin": "pipevisor"}}
    async with Supervisor([mcp("m")]) as sup:
        with pytest.raises(PluginError) as info:
            await sup.call("m", "fail", error)
        assert info.value.code == -31002
        assert info.value.data == {"pluginOrigin": "pipevisor"}
        # pipevisor's own errors keep their mark
        with pytest.raises(CallTimeout) as timeout:
            await sup.call("m", "tools/call", {"name": "sleep", "arguments": {"seconds": 9}},
                           timeout=0.2)
        assert timeout.value.data["origin"] == "pipevisor"


def test_a_local_code_without_pipevisors_mark_is_the_servers() -> None:
    """What a control-socket client gets back maps the same way as an embedded call."""
    from pipevisor.protocol import ErrorObject
    from pipevisor.supervisor.errors import error_from_object

    assert type(error_from_object(ErrorObject(-31002, "server's"))) is PluginError
    ours = error_from_object(ErrorObject(-31002, "ours", {"origin": "pipevisor"}))
    assert type(ours) is CallTimeout


ROOTS = {"roots": [{"uri": "file:///srv", "name": "srv"}]}


async def test_server_requests_get_static_answers_host_methods_or_32601_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = tmp_path / "in.jsonl"
    spec = mcp("m", "--record", str(record), server=ServerPolicy(answers={"roots/list": ROOTS}))
    async with Supervisor([spec]) as sup:
        @sup.host_method("sampling/createMessage")
        async def sample(x: str) -> Any:  # params by name, as every host method
            return {"role": "assistant", "content": {"type": "text", "text": x}}

        assert await sup.call("m", "ask", {"method": "roots/list"}) == ROOTS
        sampled = await sup.call("m", "ask", {"method": "sampling/createMessage",
                                              "params": {"x": "hi"}})
        assert sampled["content"]["text"] == "hi"
        for _ in range(3):
            answer = await sup.call("m", "ask", {"method": "elicitation/create"})
            assert answer["error"]["code"] == -32601
    init = read_record(record)[0]["params"]
    assert init["capabilities"] == {"roots": {"listChanged": False}}  # it says it has roots
    unserved = [r for r in caplog.records if "elicitation/create" in r.getMessage()]
    assert len(unserved) == 1 and "'m'" not in unserved[0].getMessage()
    assert "plugin m" in unserved[0].getMessage()
