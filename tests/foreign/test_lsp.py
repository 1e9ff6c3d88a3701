"""The LSP preset against a real process (tests/plugins/lsp_like.py): Content-Length
framing both ways, initialize/initialized, $/cancelRequest, shutdown + exit as the
graceful stop, SIGKILL and the replayed initialize."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipevisor.supervisor import PluginSpec, Supervisor
from pipevisor.supervisor.engine.config import Preset
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.errors import CallTimeout
from tests.foreign.helpers import read_record, wait_for, wait_recorded
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

LSP_LIKE = str(Path(__file__).resolve().parent.parent / "plugins" / "lsp_like.py")


def lsp(name: str, *flags: str, **overrides: Any) -> PluginSpec:
    return replace(fake_spec(name), command=(sys.executable, LSP_LIKE, *flags),
                   preset=Preset.LSP, **overrides)


async def test_initialize_then_calls_over_content_length(tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    async with Supervisor([lsp("l", "--record", str(record), "--pretty")]) as sup:
        runner = sup.runner("l")
        await runner.wait_state({PluginState.READY}, 10)
        status = sup.status()[0]
        assert status["preset"] == "lsp" and status["degradations"] == []
        assert status["server"]["serverInfo"]["name"] == "lsp-like"
        assert status["server"]["capabilities"] == {"hoverProvider": True}
        text = {"text": "line one\nline two é"}
        assert await sup.call("l", "echo", text) == text
    sent = read_record(record)
    assert [m.get("method") for m in sent[:2]] == ["initialize", "initialized"]
    assert sent[0]["params"]["rootUri"].startswith("file:///")
    assert sent[0]["params"]["processId"] == os.getpid()


async def test_graceful_stop_is_shutdown_then_exit(tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    async with Supervisor([lsp("l", "--record", str(record))]) as sup:
        await sup.wait_ready(timeout=10)
        runner = sup.runner("l")
        sup.stop("l")
        await runner.wait_state({PluginState.STOPPED}, 10)
        # exit 0: the server saw shutdown before exit (it exits 1 otherwise)
        assert runner.last_exit is not None and runner.last_exit["returncode"] == 0
    methods = [m.get("method") for m in read_record(record)]
    assert methods[-2:] == ["shutdown", "exit"]


async def test_a_timed_out_call_is_cancelled_with_cancel_request(tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    async with Supervisor([lsp("l", "--record", str(record))]) as sup:
        with pytest.raises(CallTimeout):
            await sup.call("l", "sleep", {"seconds": 30}, timeout=0.5)
        cancel = await wait_recorded(record, "$/cancelRequest", 5)
        sleep = next(m for m in read_record(record) if m.get("method") == "sleep")
        assert cancel["params"] == {"id": sleep["id"]}
        # its late -32800 answer is dropped, not a fault
        assert await sup.call("l", "echo", [1]) == [1]
        assert sup.runner("l").faults == 0


async def test_sigkill_and_the_replayed_initialize(tmp_path: Path) -> None:
    record = tmp_path / "in.jsonl"
    async with Supervisor([lsp("l", "--record", str(record))]) as sup:
        await sup.wait_ready(timeout=10)
        pid = sup.status()[0]["pid"]
        assert isinstance(pid, int) and pid > 1
        os.kill(pid, signal.SIGKILL)
        runner = sup.runner("l")
        await wait_for(lambda: runner.instance == 2 and runner.state is PluginState.READY,
                       10, "the restart")
        assert await sup.call("l", "echo", {"again": True}) == {"again": True}
    assert [m.get("method") for m in read_record(record)].count("initialize") == 2
