"""The example plugins: pipevisor-echo under a real supervisor and over raw pipes, and the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    HealthPolicy,
    PluginError,
    PluginSpec,
    PluginState,
    StopPolicy,
    Supervisor,
)
from pipevisor.supervisor.daemon.demo import run_demo

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ECHO = EXAMPLES / "python-stdlib" / "pipevisor-echo"
DEADLINE = 10.0

HANDSHAKE_PARAMS: dict[str, Any] = {
    "protocol": "pipevisor",
    "protocolVersions": {"min": "1.0", "max": "1.0"},
    "host": {"name": "test", "version": "0"},
    "plugin": {"name": "echo", "instance": 1},
}


def echo_spec() -> PluginSpec:
    return PluginSpec("echo", (str(ECHO),), autostart=False,
                      stop=StopPolicy(shutdown_grace=2.0, eof_grace=2.0, term_grace=2.0),
                      health=HealthPolicy(handshake_timeout=DEADLINE, ping_interval=0.2))


def test_examples_are_executable() -> None:
    for path in (ECHO, EXAMPLES / "misbehaving" / "pipevisor-crashy"):
        assert os.access(path, os.X_OK), path
        assert path.read_text().startswith("#!/usr/bin/env python3\n")


async def test_echo_plugin_under_the_supervisor() -> None:
    async with Supervisor([echo_spec()]) as sup, sup.subscribe() as sub:
        sup.start("echo")
        await sup.wait_ready(timeout=DEADLINE)
        [status] = sup.status()
        assert status["state"] == "ready"
        assert status["protocol_version"] == "1.0"
        assert set(status["methods"]) == {"echo", "reverse", "add"}

        assert await sup.call("echo", "echo", {"text": "hi ☃\u2028"}, timeout=DEADLINE) == {
            "text": "hi ☃\u2028"}
        assert await sup.call("echo", "reverse", {"text": "abc"}, timeout=DEADLINE) == {
            "text": "cba"}
        assert await sup.call("echo", "add", {"a": 2, "b": 40}, timeout=DEADLINE) == 42
        with pytest.raises(PluginError) as bad:
            await sup.call("echo", "add", {"a": "2", "b": 40}, timeout=DEADLINE)
        assert bad.value.code == ErrorCode.INVALID_PARAMS
        assert "'a' and 'b'" in bad.value.error.message
        with pytest.raises(PluginError) as unknown:
            await sup.call("echo", "no.such.method", {}, timeout=DEADLINE)
        assert unknown.value.code == ErrorCode.METHOD_NOT_FOUND

        # the one pipevisor/log notification after the handshake reached the event stream
        with anyio.fail_after(DEADLINE):
            while True:
                event = await sub.next()
                if event.kind == "log":
                    break
        assert event.detail["level"] == "info"
        assert "ready" in event.detail["message"]

        sup.stop("echo")
        await sup.runner("echo").wait_state({PluginState.STOPPED}, DEADLINE)
        [status] = sup.status()
        assert status["last_exit"]["returncode"] == 0
        assert status["faults"] == 0  # nothing but protocol lines on stdout


class RawPlugin:
    """pipevisor-echo over plain pipes, without the supervisor."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._buf = bytearray()

    async def send(self, line: bytes | dict[str, Any]) -> None:
        if isinstance(line, dict):
            line = json.dumps(line).encode()
        assert self.process.stdin is not None
        await self.process.stdin.send(line + b"\n")

    async def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        with anyio.fail_after(DEADLINE):
            while b"\n" not in self._buf:
                self._buf += await self.process.stdout.receive()
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def request(self, id_: int, method: str, params: Any) -> dict[str, Any]:
        await self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        return await self.receive()


async def test_echo_plugin_over_raw_pipes() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    async with await anyio.open_process([str(ECHO)], env=env) as process:
        try:
            plugin = RawPlugin(process)
            early = await plugin.request(1, "echo", {"text": "too early"})
            assert early["id"] == 1
            assert early["error"]["code"] == ErrorCode.NOT_INITIALIZED

            await plugin.send(b"this is not json \xff")
            garbage = await plugin.receive()
            assert garbage["id"] is None
            assert garbage["error"]["code"] == ErrorCode.PARSE_ERROR

            too_new = dict(HANDSHAKE_PARAMS, protocolVersions={"min": "2.0", "max": "2.0"})
            refused = await plugin.request(2, "pipevisor/handshake", too_new)
            assert refused["id"] == 2
            assert refused["error"]["code"] == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
            assert refused["error"]["data"] == {
                "supported": {"min": "1.0", "max": "1.0"},
                "requested": {"min": "2.0", "max": "2.0"},
            }
            # still not initialized after a refused handshake
            still = await plugin.request(3, "pipevisor/ping", {})
            assert still["error"]["code"] == ErrorCode.NOT_INITIALIZED

            assert process.stdin is not None
            await process.stdin.aclose()  # EOF: the plugin must exit 0 within 2 s (9.1)
            with anyio.fail_after(2.0):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_echo_plugin_negotiates_the_highest_common_version() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    async with await anyio.open_process([str(ECHO)], env=env) as process:
        try:
            plugin = RawPlugin(process)
            wide = dict(HANDSHAKE_PARAMS, protocolVersions={"min": "0.9", "max": "1.10"})
            answer = await plugin.request(1, "pipevisor/handshake", wide)
            assert answer["result"]["protocolVersion"] == "1.0"
            log = await plugin.receive()
            assert log["method"] == "pipevisor/log"
            await plugin.send(b'{"jsonrpc":"2.0","id":2,"method":"echo","params":{"text":"x"}}\r')
            assert (await plugin.receive())["result"] == {"text": "x"}
            assert (await plugin.request(3, "pipevisor/ping", {}))["result"] == {}
            assert (await plugin.request(4, "pipevisor/shutdown", {}))["result"] is None
            with anyio.fail_after(2.0):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_demo_shows_the_crash_and_the_restart() -> None:
    lines: list[str] = []
    with anyio.fail_after(60):
        await run_demo(lines.append)
    text = "\n".join(lines)
    assert 5 <= len(lines) <= 15, text
    assert '"rosivepip ,olleh"' in text
    assert "PluginCrashed [-31000]" in text
    assert "exit code 3" in text
    assert "crash requested" in text  # the crashy plugin's last stderr line
    assert "crashy restarted: ready -> backoff -> starting -> handshaking -> ready" in text
    assert 'call crashy.work() -> {"done": true}' in text
    assert "echo stopped (exit code 0), crashy stopped (exit code 0)" in text
