"""The examples in Bash, Node.js, Go and C under a real Supervisor and over raw pipes.

Each example is built once per test session (into a temporary folder, with
scripts/build-examples, the same command the demo uses) and then run for real. A missing
toolchain skips its tests with a reason saying what to install, or fails them when
PIPEVISOR_REQUIRE_TOOLCHAINS=1 (CI sets it, so CI skips nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    HealthPolicy,
    PluginError,
    PluginSpec,
    PluginState,
    StopPolicy,
    Supervisor,
)
from tests.examples.test_python_stdlib_example import HANDSHAKE_PARAMS, RawPlugin
from tests.examples.toolchains import (
    BUILD,
    LANGUAGES,
    ROOT,
    Example,
    missing_toolchain,
    unavailable,
)

DEADLINE = 20.0

@pytest.fixture(params=LANGUAGES, ids=lambda e: e.lang)
def plugin(request: pytest.FixtureRequest, build: Callable[[Example], Path]) -> Path:
    example: Example = request.param
    return build(example)


@pytest.fixture(params=[e for e in LANGUAGES if e.lang != "bash"], ids=lambda e: e.lang)
def bounded_plugin(request: pytest.FixtureRequest, build: Callable[[Example], Path]) -> Path:
    """The examples that bound their line buffer (the Bash one does not, as its README says)."""
    example: Example = request.param
    return build(example)


def spec(path: Path) -> PluginSpec:
    return PluginSpec("echo", (str(path),), autostart=False,
                      stop=StopPolicy(shutdown_grace=DEADLINE, eof_grace=2.0, term_grace=2.0),
                      health=HealthPolicy(handshake_timeout=DEADLINE, ping_interval=0.1))


@pytest.mark.anyio
async def test_handshake_calls_and_clean_shutdown_under_the_supervisor(plugin: Path) -> None:
    async with Supervisor([spec(plugin)]) as sup:
        sup.start("echo")
        await sup.wait_ready(timeout=DEADLINE)
        [status] = sup.status()
        assert status["protocol_version"] == "1.0"
        assert status["methods"] == {"echo": "1.0", "add": "1.0"}

        text = 'hi ☃ \u2028 "quoted" \\ \t end'
        assert await sup.call("echo", "echo", {"text": text}, timeout=DEADLINE) == {"text": text}
        assert await sup.call("echo", "add", {"a": 2, "b": 40}, timeout=DEADLINE) == 42
        assert await sup.call("echo", "add", {"a": 0.5, "b": -2}, timeout=DEADLINE) == -1.5
        with pytest.raises(PluginError) as bad:
            await sup.call("echo", "add", {"a": "2", "b": 40}, timeout=DEADLINE)
        assert bad.value.code == ErrorCode.INVALID_PARAMS
        with pytest.raises(PluginError) as unknown:
            await sup.call("echo", "no.such.method", {}, timeout=DEADLINE)
        assert unknown.value.code == ErrorCode.METHOD_NOT_FOUND

        sup.stop("echo")
        runner = sup.runner("echo")
        await runner.wait_state({PluginState.STOPPED}, DEADLINE)
        status = runner.status()
        assert status["last_exit"]["returncode"] == 0
        assert status["faults"] == 0  # nothing but protocol lines on stdout
        log = "\n".join(runner.stderr.last(20))
        assert "shutdown requested" in log  # it left through pipevisor/shutdown ...
        assert "stdin closed" not in log  # ... not through end of input


def request(id_: int | str, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        message["params"] = params
    return message


@pytest.mark.anyio
async def test_protocol_edges_over_raw_pipes_and_exit_on_eof(plugin: Path) -> None:
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    async with await anyio.open_process([str(plugin)], env=env) as process:
        try:
            raw = RawPlugin(process)
            early = await raw.request(1, "echo", {"text": "too early"})
            assert early["error"]["code"] == ErrorCode.NOT_INITIALIZED

            await raw.send(b"this is not json")
            garbage = await raw.receive()
            assert garbage["id"] is None
            assert garbage["error"]["code"] == ErrorCode.PARSE_ERROR

            too_new = dict(HANDSHAKE_PARAMS, protocolVersions={"min": "2.0", "max": "2.3"})
            refused = await raw.request("hs", "pipevisor/handshake", too_new)
            assert refused["id"] == "hs"
            assert refused["error"]["code"] == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
            assert refused["error"]["data"] == {"supported": {"min": "1.0", "max": "1.0"},
                                                "requested": {"min": "2.0", "max": "2.3"}}

            # 1.10 > 1.9 > 1.0: compared as numbers, the highest common version is 1.0
            wide = dict(HANDSHAKE_PARAMS, protocolVersions={"min": "0.9", "max": "1.10"})
            answer = await raw.request(2, "pipevisor/handshake", wide)
            assert answer["result"]["protocolVersion"] == "1.0"

            await raw.send(b"")  # blank lines are skipped
            await raw.send({"jsonrpc": "2.0", "method": "pipevisor/cancel", "params": {"id": 9}})
            await raw.send({"jsonrpc": "2.0", "method": "no.such.notification"})
            await raw.send(b'{"jsonrpc":"2.0","id":3,"method":"echo","params":{"text":"x"}}\r')
            assert await raw.receive() == {"jsonrpc": "2.0", "id": 3, "result": {"text": "x"}}
            assert (await raw.request(4, "pipevisor/ping", {}))["result"] == {}
            await raw.send(request(5, "echo"))  # no params at all
            assert (await raw.receive())["error"]["code"] == ErrorCode.INVALID_PARAMS
            await raw.send(b'{"jsonrpc":"2.0","id":6,"method":"echo","params":null}')
            assert (await raw.receive())["error"]["code"] == ErrorCode.INVALID_REQUEST
            unknown = await raw.request(7, "pipevisor/unheard-of", {})
            assert unknown["error"]["code"] == ErrorCode.METHOD_NOT_FOUND
            await raw.send({"jsonrpc": "2.0", "id": 99, "result": {}})  # a stray response
            # longer than a pipe buffer and than one argument may be, full of blanks, CRLF-ended
            big = "x " * 250_000
            await raw.send(json.dumps(request(8, "echo", {"text": big})).encode() + b"\r")
            assert (await raw.receive())["result"] == {"text": big}

            assert process.stdin is not None
            await process.stdin.aclose()  # SPEC 9.1: exit with status 0 within 2 s
            with anyio.fail_after(2.0):
                assert await process.wait() == 0
            assert process.stdout is not None
            with anyio.fail_after(DEADLINE):
                rest = b"".join([chunk async for chunk in process.stdout])
            assert rest == b"", rest  # the stray response got no answer
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.mark.anyio
async def test_a_line_over_max_line_bytes_is_refused_and_skipped(bounded_plugin: Path) -> None:
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    async with await anyio.open_process([str(bounded_plugin)], env=env) as process:
        try:
            raw = RawPlugin(process)
            params = dict(HANDSHAKE_PARAMS, limits={"maxLineBytes": 200})
            assert "result" in await raw.request(1, "pipevisor/handshake", params)
            long = json.dumps(request(2, "echo", {"text": "y" * 300})).encode()
            assert process.stdin is not None
            await process.stdin.send(long[:100])  # in two pieces, as a pipe may deliver it
            await process.stdin.send(long[100:] + b"\n")
            refused = await raw.receive()
            assert refused["id"] is None
            assert refused["error"]["code"] == ErrorCode.PARSE_ERROR
            assert (await raw.request(3, "echo", {"text": "short"}))["result"] == {"text": "short"}
            assert (await raw.request(4, "pipevisor/shutdown", {}))["result"] is None
            with anyio.fail_after(2.0):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def test_a_missing_toolchain_says_what_to_install(tmp_path: Path) -> None:
    nowhere = str(tmp_path)  # a PATH with nothing on it
    reasons = {e.lang: missing_toolchain(e, path=nowhere) for e in LANGUAGES}
    assert reasons == {"bash": "bash not found: apt-get install bash",
                       "node": "node not found: apt-get install nodejs",
                       "go": "go not found: apt-get install golang-go",
                       "c": "cc not found: apt-get install gcc"}


def test_a_missing_toolchain_fails_when_toolchains_are_required(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPEVISOR_REQUIRE_TOOLCHAINS", "1")
    with pytest.raises(pytest.fail.Exception, match="go not found"):
        unavailable("go not found: apt-get install golang-go")
    monkeypatch.setenv("PIPEVISOR_REQUIRE_TOOLCHAINS", "0")
    with pytest.raises(pytest.skip.Exception, match="go not found"):
        unavailable("go not found: apt-get install golang-go")


def test_build_script_puts_binaries_next_to_their_sources_and_git_ignores_them() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "examples/go/pipevisor-go-echo",
         "examples/c/pipevisor-c-echo"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert ignored.stdout.split() == ["examples/go/pipevisor-go-echo",
                                      "examples/c/pipevisor-c-echo"]
    usage = subprocess.run([str(BUILD), "fortran"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    assert "unknown argument 'fortran'" in usage.stderr
