"""The host's side of protocol/SPEC.md, against a plugin whose every line the test
decides (tests/plugins/scripted.py). Each test cites the MUST ids it checks; the
plugin side is tests/conformance/."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    CallError,
    HealthPolicy,
    PluginMode,
    PluginSpec,
    PluginState,
    RestartPolicy,
    Supervisor,
)

pytestmark = pytest.mark.anyio

SCRIPTED = str(Path(__file__).resolve().parents[1] / "plugins" / "scripted.py")
GOOD = {"result": {
    "protocolVersion": "1.0", "plugin": {"name": "s", "version": "1.0.0"},
    "methods": {"send": {}, "received": {}, "echo": {}},
    "capabilities": {"shutdown": True}}}


def scripted(plan: dict[str, Any], name: str = "s", **overrides: Any) -> PluginSpec:
    spec = PluginSpec(name, (sys.executable, SCRIPTED, json.dumps(plan)),
                      restart=RestartPolicy(first_backoff=0.05, max_delay=0.2,
                                            max_restarts=3, within_seconds=30),
                      health=HealthPolicy(handshake_timeout=10, ping_interval=0))
    return replace(spec, **overrides)


@asynccontextmanager
async def running(spec: PluginSpec) -> AsyncIterator[Supervisor]:
    async with Supervisor([spec]) as sup:
        yield sup


async def received(sup: Supervisor) -> dict[str, list[Any]]:
    got = await sup.call("s", "received", {}, timeout=10)
    return {k: [orjson.loads(line) for line in v] for k, v in got.items()}


async def sent_and_answered(sup: Supervisor, lines: list[str], answers: int
                            ) -> list[Any]:
    """Have the plugin write ``lines``; wait until the host wrote ``answers`` lines back."""
    await sup.call("s", "send", {"lines": lines}, timeout=10)
    with anyio.fail_after(10):
        while True:
            after = (await received(sup))["after"]
            if len(after) >= answers:
                return after
            await anyio.sleep(0.01)


# ---------------------------------------------------------------- 6: the handshake


async def test_the_host_sends_nothing_before_it_has_read_the_handshake_answer() -> None:
    """[M-6.1e]: a call made while the handshake is pending, and pings due meanwhile,
    wait; nothing but the handshake reaches the plugin before its answer."""
    spec = scripted({**GOOD, "delay": 0.5}, health=HealthPolicy(
        handshake_timeout=10, ping_interval=0.05, ping_timeout=5))
    async with running(spec) as sup:
        early = await sup.call("s", "echo", {"x": 1}, timeout=10)  # issued before ready
        assert early == {"x": 1}
        assert (await received(sup))["before"] == []


@pytest.mark.parametrize("result", [
    {**GOOD["result"], "protocolVersion": "9.9"},
    {**GOOD["result"], "methods": {"pipevisor/evil": {}}},
    {"protocolVersion": "1.0", "methods": {}},  # no "plugin": the schema says no
], ids=["version-outside-offer", "reserved-method-name", "schema"])
async def test_a_handshake_result_the_host_must_reject_fails_the_plugin(
        result: dict[str, Any]) -> None:
    """[M-6.4c]: rejected, marked failed, not restarted, no calls routed."""
    async with running(scripted({"result": result}, mode=PluginMode.PIPEVISOR)) as sup:
        runner = sup.runner("s")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert runner.tracker.total_restarts == 0
        with pytest.raises(CallError):
            await sup.call("s", "echo", {}, timeout=1)


@pytest.mark.parametrize("code", [-32603, -32602, 1])
async def test_any_other_handshake_error_is_a_failed_start_not_raw_mode(code: int) -> None:
    """[M-6.5b]: a pipevisor plugin that could not start: the restart policy runs, raw
    mode never does, no call is routed to it."""
    plan = {"error": {"code": code, "message": "database unreachable"}}
    async with running(scripted(plan)) as sup:
        runner = sup.runner("s")
        await runner.wait_state({PluginState.FAILED}, 20)
        assert runner.tracker.total_restarts >= 1  # the policy ran, then gave up
        assert not runner.raw
        # the last reason may be the policy's give-up; each start ended for this one
        reasons = [str(e.detail.get("reason")) for e in sup.events.recent(0)
                   if e.plugin == "s" and e.kind == "state"]
        assert any("could not start" in r and "database unreachable" in r and str(code) in r
                   for r in reasons), reasons
        with pytest.raises(CallError):
            await sup.call("s", "echo", {}, timeout=1)


async def test_method_not_found_in_auto_mode_is_raw_mode() -> None:
    """[M-6.5b]: -32601 means a process that does not know the handshake."""
    plan = {"error": {"code": -32601, "message": "Method not found"}}
    async with running(scripted(plan)) as sup:
        runner = sup.runner("s")
        await runner.wait_state({PluginState.DEGRADED, PluginState.READY}, 10)
        assert runner.raw and runner.status()["mode"] == "raw"


# ---------------------------------------------------------------- 3, 4: framing


async def test_the_host_answers_invalid_requests_from_a_plugin() -> None:
    """[M-4.2a] [M-3.4a]: `[]`, a bare id and a bad batch element get -32600 (id null
    when none can be read); a batch gets one array of answers."""
    async with running(scripted(GOOD)) as sup:
        await sup.wait_ready(timeout=10)
        after = await sent_and_answered(sup, [
            "[]",
            '{"jsonrpc":"2.0","id":"x"}',
            '[{"jsonrpc":"2.0","id":7,"method":"no.such.method"}, 1]',
        ], answers=3)
    empty, bare, batch = after[:3]
    assert empty["id"] is None and empty["error"]["code"] == ErrorCode.INVALID_REQUEST
    assert bare["id"] == "x" and bare["error"]["code"] == ErrorCode.INVALID_REQUEST
    assert isinstance(batch, list) and len(batch) == 2
    by_id = {a["id"]: a["error"]["code"] for a in batch}
    assert by_id == {7: ErrorCode.METHOD_NOT_FOUND, None: ErrorCode.INVALID_REQUEST}


async def test_the_host_answers_a_line_that_is_not_json_as_a_json_rpc_server() -> None:
    """SPEC 3.5: -32700 with id null; the plugin keeps working."""
    async with running(scripted(GOOD)) as sup:
        await sup.wait_ready(timeout=10)
        after = await sent_and_answered(sup, ["debug: not json", '{"broken": '], answers=2)
        assert await sup.call("s", "echo", {"ok": 1}, timeout=10) == {"ok": 1}
    assert [(a["id"], a["error"]["code"]) for a in after[:2]] == [
        (None, ErrorCode.PARSE_ERROR), (None, ErrorCode.PARSE_ERROR)]


async def test_the_host_never_writes_a_line_longer_than_the_limit() -> None:
    """[M-3.3d]: params that would make a longer line fail locally with -32602; the
    plugin never sees them."""
    async with running(scripted(GOOD, max_line_bytes=4096)) as sup:
        await sup.wait_ready(timeout=10)
        with pytest.raises(CallError) as info:
            await sup.call("s", "echo", {"blob": "x" * 8192}, timeout=10)
        assert info.value.code == ErrorCode.INVALID_PARAMS
        assert await sup.call("s", "echo", {"blob": "y"}, timeout=10) == {"blob": "y"}
        got = await sup.call("s", "received", {}, timeout=10)
        assert all(len(line) < 4096 for line in got["after"])


# ---------------------------------------------------------------- 7, 8: calls to the host


async def test_every_host_request_is_answered_once_with_the_right_code() -> None:
    """[M-8a] [M-8b]: unknown method -32601, unusable params -32602 (not -32603), a
    good call its result; each exactly once."""
    async with running(scripted(GOOD)) as sup:
        @sup.host_method("add")
        async def add(a: int, b: int) -> int:
            return a + b

        await sup.wait_ready(timeout=10)
        after = await sent_and_answered(sup, [
            '{"jsonrpc":"2.0","id":1,"method":"nope","params":{}}',
            '{"jsonrpc":"2.0","id":2,"method":"add","params":{"a":1}}',
            '{"jsonrpc":"2.0","id":3,"method":"add","params":{"a":1,"b":2}}',
        ], answers=3)
        await anyio.lowlevel.checkpoint()  # nothing more may follow: checked below with a barrier
        assert await sup.call("s", "echo", {}, timeout=10) == {}
        after = (await received(sup))["after"]
    answers = {a["id"]: a for a in after}
    assert len(after) == 3 == len(answers)
    assert answers[1]["error"]["code"] == ErrorCode.METHOD_NOT_FOUND
    assert answers[2]["error"]["code"] == ErrorCode.INVALID_PARAMS
    assert answers[3]["result"] == 3


async def test_a_cancelled_host_call_still_gets_exactly_one_response() -> None:
    """[M-7.2c]: the plugin cancels a host call in flight: the host stops the work and
    still answers the id once."""
    started = anyio.Event()
    stopped = anyio.Event()
    async with running(scripted(GOOD)) as sup:
        @sup.host_method("wait")
        async def wait() -> str:
            started.set()
            try:
                await anyio.sleep(60)
            finally:
                stopped.set()
            return "finished"

        await sup.wait_ready(timeout=10)
        await sup.call("s", "send", {"lines": [
            '{"jsonrpc":"2.0","id":5,"method":"wait","params":{}}']}, timeout=10)
        with anyio.fail_after(10):
            await started.wait()
        after = await sent_and_answered(sup, [
            '{"jsonrpc":"2.0","method":"pipevisor/cancel","params":{"id":5}}'], answers=1)
        with anyio.fail_after(10):
            await stopped.wait()
        assert await sup.call("s", "echo", {}, timeout=10) == {}
        after = (await received(sup))["after"]
    assert [a["id"] for a in after] == [5]
    assert after[0]["error"]["code"] == ErrorCode.CANCELLED


# ---------------------------------------------------------------- 14: status


async def test_status_pid_is_the_plugins_own_and_the_shim_is_apart() -> None:
    """SPEC 14: ``pid`` is the plugin process as this host sees it; ``shim_pid`` the
    containment shim above it (None without one)."""
    import psutil

    async with running(scripted(GOOD)) as sup:
        await sup.wait_ready(timeout=10)
        status = sup.runner("s").status()
        plugin = psutil.Process(status["pid"])
        assert SCRIPTED in plugin.cmdline()
        if status["containment"]["shim"] is None:
            assert status["shim_pid"] is None
            assert status["pid"] == sup.runner("s").process.pid  # type: ignore[union-attr]
        else:
            assert status["shim_pid"] != status["pid"]
            assert status["shim_pid"] in {p.pid for p in plugin.parents()}


# ---------------------------------------------------------------- 8: notifications to the host


def _note(method: str, params: Any) -> str:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params}).decode()


async def test_host_notification_handlers_get_checked_params() -> None:
    """A handler registered with a schema runs for valid params only; neither a bad
    notification nor a handler that raises gets an answer or disturbs the plugin."""
    got: list[tuple[str, Any]] = []
    arrived = anyio.Event()
    async with running(scripted(GOOD)) as sup:
        @sup.notification_handler("job.done", params_schema={
            "type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}})
        async def done(plugin: str, params: Any) -> None:
            got.append((plugin, params))
            if params["id"] == 3:
                arrived.set()
            if params["id"] == 2:
                raise RuntimeError("a host bug")

        await sup.wait_ready(timeout=10)
        await sup.call("s", "send", {"lines": [
            _note("job.done", {"id": "one"}),   # invalid: dropped before the handler
            _note("job.done", {"id": 2}),       # the handler raises: logged only
            _note("other", {}),                 # no handler: only an event
            _note("job.done", {"id": 3}),
        ]}, timeout=10)
        with anyio.fail_after(10):
            await arrived.wait()
        assert await sup.call("s", "echo", {"still": "here"}, timeout=10) == {"still": "here"}
        assert (await received(sup))["after"] == []  # notifications are never answered
    assert got == [("s", {"id": 2}), ("s", {"id": 3})]
    assert sup.notifications.invalid == {"s": 1} and sup.notifications.failed == {"s": 1}


async def test_a_notification_flood_is_bounded_per_plugin() -> None:
    """At most MAX_IN_FLIGHT handler runs per plugin; the rest are dropped and counted."""
    from pipevisor.supervisor.engine.host_notifications import MAX_IN_FLIGHT

    release = anyio.Event()
    running_now = [0]
    most = [0]
    async with running(scripted(GOOD)) as sup:
        @sup.notification_handler("tick")
        async def tick(plugin: str, params: Any) -> None:
            running_now[0] += 1
            most[0] = max(most[0], running_now[0])
            try:
                await release.wait()
            finally:
                running_now[0] -= 1

        await sup.wait_ready(timeout=10)
        await sup.call("s", "send", {"lines": [_note("tick", {"n": i}) for i in range(500)]},
                       timeout=10)
        with anyio.fail_after(10):
            while sup.notifications.dropped.get("s", 0) < 500 - MAX_IN_FLIGHT:
                await anyio.sleep(0.01)
        assert most[0] == MAX_IN_FLIGHT
        assert await sup.call("s", "echo", {}, timeout=10) == {}
        release.set()
        with anyio.fail_after(10):
            while running_now[0]:
                await anyio.sleep(0.01)


async def test_protocol_names_cannot_get_a_host_handler() -> None:
    with pytest.raises(ValueError, match="pipevisor/"):
        Supervisor([]).notifications.add("pipevisor/log", lambda p, x: anyio.lowlevel.checkpoint())


# ---------------------------------------------------------------- 2.4: stderr as a log


@pytest.mark.parametrize(("line", "level", "message"), [
    ('{"level":"warning","message":"cache miss storm","misses":1200}', "WARNING",
     "cache miss storm"),
    ('{"level":"error","msg":"disk full"}', "ERROR", "disk full"),
    ('{"level":"loud","msg":"x"}', "INFO", '{"level":"loud","msg":"x"}'),
    ("plain text {not json", "INFO", "plain text {not json"),
])
def test_a_json_stderr_line_is_logged_at_its_level(line: str, level: str,
                                                   message: str) -> None:
    """SPEC 2.4: `message` or `msg`, with a known level; anything else as it is."""
    import logging

    from pipevisor.supervisor.engine.plugin_output import stderr_record as _stderr_record

    got_level, got_message = _stderr_record(line)
    assert (logging.getLevelName(got_level), got_message) == (level, message)


async def test_a_caller_cannot_send_the_protocols_own_methods() -> None:
    """#19: `pipevisor call p pipevisor/shutdown` stopped a plugin behind the supervisor's
    back (counted as a crash). The protocol's methods are the supervisor's."""
    async with running(scripted(GOOD)) as sup:
        await sup.wait_ready(timeout=10)
        for method in ("pipevisor/shutdown", "pipevisor/handshake"):
            with pytest.raises(CallError) as info:
                await sup.call("s", method, {}, timeout=5)
            assert info.value.code == ErrorCode.METHOD_UNAVAILABLE
        with pytest.raises(CallError):
            await sup.notify("s", "pipevisor/cancel", {"id": 1})
        assert await sup.call("s", "echo", {"alive": True}, timeout=5) == {"alive": True}
        assert sup.runner("s").tracker.total_restarts == 0
        assert (await received(sup))["after"] == []
