"""Bring-up without processes (engine/bringup.py): what an error answer to the handshake
means, and every branch of the handshake, a preset's initialize and the start sequence,
driven over a scripted link in milliseconds; tests/supervisor/test_host_conformance.py
checks the same table end to end with real plugins."""

from __future__ import annotations

from typing import Any

import pytest

from pipevisor.protocol import PROTOCOL_VERSIONS, ErrorCode, ErrorObject, HandshakeParams
from pipevisor.supervisor.engine.bringup import (
    CRASHED,
    GoRaw,
    Handshaken,
    Initialized,
    handshake,
    initialize_server,
    judge_handshake_error,
    range_text,
    start_sequence,
)
from pipevisor.supervisor.engine.config import (
    HealthPolicy,
    PluginMode,
    PluginSpec,
    Preset,
    StartStep,
)
from pipevisor.supervisor.engine.ending import End, EndKind
from pipevisor.supervisor.engine.presets import MCP_VERSIONS
from pipevisor.supervisor.errors import PluginError, local


@pytest.mark.parametrize(("code", "mode", "action"), [
    (ErrorCode.METHOD_NOT_FOUND, PluginMode.AUTO, "raw"),
    (ErrorCode.METHOD_NOT_FOUND, PluginMode.PIPEVISOR, "give_up"),
    (ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, PluginMode.AUTO, "give_up"),
    (ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, PluginMode.PIPEVISOR, "give_up"),
    (ErrorCode.INTERNAL_ERROR, PluginMode.AUTO, "failed_start"),
    (ErrorCode.INVALID_PARAMS, PluginMode.AUTO, "failed_start"),
    (ErrorCode.INVALID_PARAMS, PluginMode.PIPEVISOR, "failed_start"),
    (1, PluginMode.AUTO, "failed_start"),
    (ErrorCode.NOT_INITIALIZED, PluginMode.AUTO, "failed_start"),
])
def test_what_a_handshake_error_means(code: int, mode: PluginMode, action: str) -> None:
    """[M-6.5b]: only -32601 can be raw mode, only where the config allows it."""
    verdict = judge_handshake_error(code, "nope", None, mode, PROTOCOL_VERSIONS)
    assert verdict.action == action
    assert str(code) in verdict.reason or "no common protocol version" in verdict.reason


def test_the_reasons_say_what_to_do() -> None:
    sdk = judge_handshake_error(ErrorCode.INVALID_PARAMS, "Invalid request parameters",
                                None, PluginMode.AUTO, PROTOCOL_VERSIONS)
    assert 'preset = "mcp"' in sdk.reason  # an MCP SDK server without its preset
    version = judge_handshake_error(ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, "no",
                                    {"supported": {"min": "2.0", "max": "2.3"}},
                                    PluginMode.AUTO, PROTOCOL_VERSIONS)
    assert "the plugin 2.0..2.3" in version.reason and str(PROTOCOL_VERSIONS) in version.reason
    assert "did not say" in range_text(["junk"])


# ------------------------------------------------- bring-up steps over a scripted link


class ScriptedLink:
    """A connection stand-in: each method answers from a script (a value, or an
    exception to raise); every message sent is recorded."""

    def __init__(self, **answers: Any) -> None:
        self.answers = {k.replace("__", "/"): v for k, v in answers.items()}
        self.sent: list[tuple[str, str, Any]] = []

    async def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        self.sent.append(("call", method, params))
        answer = self.answers[method]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def notify(self, method: str, params: Any = None) -> None:
        self.sent.append(("notify", method, params))


def _err(code: int, message: str = "no", data: Any = None) -> ErrorObject:
    return ErrorObject(code, message, data)


GOOD = {"protocolVersion": "1.0", "plugin": {"name": "p", "version": "1"},
        "methods": {"echo": {"version": "1.0"}}}


def _spec(mode: PluginMode = PluginMode.AUTO, **kw: Any) -> PluginSpec:
    return PluginSpec("p", ("p",), mode=mode, health=HealthPolicy(handshake_timeout=2), **kw)


async def _handshake(link: ScriptedLink, mode: PluginMode = PluginMode.AUTO,
                     junk: bytes | None = None) -> Any:
    return await handshake(link, _spec(mode), HandshakeParams("p"), lambda: junk)


@pytest.mark.anyio
async def test_a_good_handshake() -> None:
    link = ScriptedLink(pipevisor__handshake=GOOD)
    outcome = await _handshake(link)
    assert isinstance(outcome, Handshaken)
    assert set(outcome.result.methods) == {"echo"}
    assert link.sent[0][:2] == ("call", "pipevisor/handshake")
    assert link.sent[0][2]["protocolVersions"]


@pytest.mark.anyio
async def test_a_crash_during_the_handshake_is_left_to_the_exit_watcher() -> None:
    link = ScriptedLink(pipevisor__handshake=local(ErrorCode.PLUGIN_CRASHED, "died"))
    assert await _handshake(link) is CRASHED


@pytest.mark.anyio
async def test_no_answer_in_time() -> None:
    late = local(ErrorCode.TIMEOUT, "late")
    quiet = await _handshake(ScriptedLink(pipevisor__handshake=late))
    assert isinstance(quiet, End) and not quiet.give_up
    assert quiet.kind is EndKind.HANDSHAKE and 'mode = "raw"' in quiet.detail
    strict = await _handshake(ScriptedLink(pipevisor__handshake=late), PluginMode.PIPEVISOR)
    assert isinstance(strict, End) and 'mode = "raw"' not in strict.detail
    junk = await _handshake(ScriptedLink(pipevisor__handshake=late), junk=b"Usage: foo")
    assert isinstance(junk, End) and junk.give_up and "b'Usage: foo'" in junk.detail


@pytest.mark.anyio
async def test_error_answers_follow_the_spec_table() -> None:
    unknown = PluginError(_err(ErrorCode.METHOD_NOT_FOUND, "Method not found"))
    raw = await _handshake(ScriptedLink(pipevisor__handshake=unknown))
    assert isinstance(raw, GoRaw) and "does not know pipevisor/handshake" in raw.reason
    strict = await _handshake(ScriptedLink(pipevisor__handshake=unknown), PluginMode.PIPEVISOR)
    assert isinstance(strict, End) and strict.give_up
    version = PluginError(_err(ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, "old",
                               {"supported": "2.0"}))
    mismatch = await _handshake(ScriptedLink(pipevisor__handshake=version))
    assert isinstance(mismatch, End) and mismatch.give_up and "2.0" in mismatch.detail
    assert mismatch.error is not None
    assert mismatch.error.code == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    broken = PluginError(_err(ErrorCode.INTERNAL_ERROR, "db down"))
    failed = await _handshake(ScriptedLink(pipevisor__handshake=broken))
    assert isinstance(failed, End) and not failed.give_up and "db down" in failed.detail


@pytest.mark.anyio
async def test_an_answer_that_is_not_a_handshake_result() -> None:
    echo = await _handshake(ScriptedLink(pipevisor__handshake={"echoed": True}))
    assert isinstance(echo, GoRaw) and "not a pipevisor handshake result" in echo.reason
    bad = dict(GOOD, methods="nope")
    invalid = await _handshake(ScriptedLink(pipevisor__handshake=bad))
    assert isinstance(invalid, End) and invalid.give_up
    assert invalid.detail.startswith("invalid handshake answer")
    strict = await _handshake(ScriptedLink(pipevisor__handshake=[1, 2]), PluginMode.PIPEVISOR)
    assert isinstance(strict, End) and strict.give_up


@pytest.mark.anyio
async def test_the_start_sequence_runs_in_order_and_names_the_failed_step() -> None:
    steps = (StartStep("warm", {"n": 1}), StartStep("ready", None, notify=True),
             StartStep("load"))
    spec = _spec(start_sequence=steps)
    link = ScriptedLink(warm=True, load=True)
    assert await start_sequence(link, spec) is None
    assert [m for _, m, _ in link.sent] == ["warm", "ready", "load"]
    assert link.sent[1][0] == "notify"
    failing = ScriptedLink(warm=True, load=PluginError(_err(-32000, "disk full")))
    end = await start_sequence(failing, spec)
    assert isinstance(end, End) and end.kind is EndKind.START
    assert "step 3 (load)" in end.detail and "disk full" in end.detail
    died = ScriptedLink(warm=local(ErrorCode.PLUGIN_CRASHED, "died"))
    assert await start_sequence(died, spec) is CRASHED
    assert [m for _, m, _ in died.sent] == ["warm"]


@pytest.mark.anyio
async def test_an_mcp_servers_initialize() -> None:
    spec = _spec(PluginMode.RAW, preset=Preset.MCP)
    link = ScriptedLink(initialize={"protocolVersion": MCP_VERSIONS[0],
                                    "serverInfo": {"name": "s"}})
    done = await initialize_server(link, spec, "host", "9")
    assert isinstance(done, Initialized) and done.info is not None
    assert done.info["serverInfo"] == {"name": "s"}
    assert [m for _, m, _ in link.sent] == ["initialize", "notifications/initialized"]
    assert link.sent[0][2]["clientInfo"] == {"name": "host", "version": "9"}
    other = await initialize_server(ScriptedLink(initialize={"protocolVersion": "1999-01-01"}),
                                    spec, "host", "9")
    assert isinstance(other, End) and other.give_up and "no common protocol version" in other.detail
    refused = await initialize_server(
        ScriptedLink(initialize=PluginError(_err(-32602, "bad params"))), spec, "h", "1")
    assert isinstance(refused, End) and not refused.give_up and "refused" in refused.detail
    late = await initialize_server(
        ScriptedLink(initialize=local(ErrorCode.TIMEOUT, "late")), spec, "h", "1")
    assert isinstance(late, End) and "no answer to mcp initialize" in late.detail
    none = await initialize_server(ScriptedLink(), _spec(), "h", "1")
    assert isinstance(none, Initialized) and none.info is None
