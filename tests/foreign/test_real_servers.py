"""The presets against real third-party servers, at the versions pinned in
tests/foreign/package.json (npm) and tests/foreign/requirements.txt (PyPI):

- ``@modelcontextprotocol/server-everything``, the MCP reference server (node);
- tests/plugins/mcp_sdk_server.py, an MCP server written with the PyPI ``mcp`` SDK;
- ``pylsp`` from python-lsp-server, a language server.

Each: start, calls, SIGKILL and calls again after the replayed initialize, a cancelled
call reaching the server (tests/plugins/tee_stdin.py copies what the server receives to
a file), and for MCP a SIGSTOPped server found by ping and restarted.

.ci/run installs them (``npm install --prefix tests/foreign``; a venv at
tests/foreign/.venv for the PyPI ones, apart from pipevisor's own environment). Without
them these tests skip, saying how to install them; with PIPEVISOR_REQUIRE_FOREIGN=1 a
missing or wrongly versioned server is a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipevisor.supervisor import HealthPolicy, PluginSpec, Supervisor
from pipevisor.supervisor.engine.config import Preset
from pipevisor.supervisor.engine.presets import MCP_VERSIONS
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.errors import CallTimeout
from tests.foreign.helpers import read_record, stopped, wait_for
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
PLUGINS = HERE.parent / "plugins"
TEE = str(PLUGINS / "tee_stdin.py")
SDK_SERVER = str(PLUGINS / "mcp_sdk_server.py")
EVERYTHING_PKG = HERE / "node_modules" / "@modelcontextprotocol" / "server-everything"
EVERYTHING = str(EVERYTHING_PKG / "dist" / "index.js")
VENV_PY = HERE / ".venv" / "bin" / "python"
PYLSP = HERE / ".venv" / "bin" / "pylsp"
# the lines of a process that is one of ours (left behind if still running after a test)
OURS = (TEE, SDK_SERVER, EVERYTHING, str(PYLSP))

NPM_INSTALL = "npm install --prefix tests/foreign --no-audit --no-fund"
PIP_INSTALL = ("python -m venv tests/foreign/.venv && "
               "tests/foreign/.venv/bin/pip install -r tests/foreign/requirements.txt")


def required() -> bool:
    return os.environ.get("PIPEVISOR_REQUIRE_FOREIGN") == "1"


def missing(what: str, install: str) -> None:
    """Skips the test, or fails it under PIPEVISOR_REQUIRE_FOREIGN=1."""
    if required():
        pytest.fail(f"{what} (PIPEVISOR_REQUIRE_FOREIGN=1)")
    pytest.skip(f"{what}; install it (.ci/run does): {install}")


@cache
def npm_pin() -> str:
    deps = json.loads((HERE / "package.json").read_text())["dependencies"]
    return str(deps["@modelcontextprotocol/server-everything"])


@cache
def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (HERE / "requirements.txt").read_text().splitlines():
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip()):
            pins[m[1]] = m[2]
    return pins


@cache
def venv_versions() -> dict[str, str] | None:
    """Installed versions of the pinned PyPI packages in tests/foreign/.venv."""
    if not VENV_PY.exists():
        return None
    code = ("import json, sys, importlib.metadata as m\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    done = subprocess.run([str(VENV_PY), "-c", code, *pip_pins()], capture_output=True,
                          text=True, timeout=60, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def need_everything() -> str:
    node = shutil.which("node")
    if node is None:
        missing("node is not on PATH", "node and npm")
    assert node is not None
    package = EVERYTHING_PKG / "package.json"
    if not package.exists():
        missing(f"@modelcontextprotocol/server-everything is not installed in "
                f"{EVERYTHING_PKG}", NPM_INSTALL)
    version = json.loads(package.read_text())["version"]
    if version != npm_pin():
        missing(f"server-everything {version} is installed, {npm_pin()} is pinned",
                NPM_INSTALL)
    return node


def need_pypi(package: str) -> None:
    versions = venv_versions()
    if versions is None:
        missing(f"{package} is not installed: no working {VENV_PY}", PIP_INSTALL)
    assert versions is not None
    if versions.get(package) != pip_pins()[package]:
        missing(f"{package} {versions.get(package)} is installed, "
                f"{pip_pins()[package]} is pinned", PIP_INSTALL)


@pytest.fixture(autouse=True)
def no_processes_left() -> Iterator[None]:
    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if any(arg in OURS for arg in cmdline):
                found.append(proc)
        return found

    before = {p.pid for p in ours()}
    yield
    left = [p for p in ours() if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        proc.kill()
    assert not alive, f"processes left behind: {[p.cmdline() for p in alive]}"


# ---------------------------------------------------------------- MCP


@dataclass(frozen=True)
class McpServer:
    command: tuple[str, ...]
    server_name: str
    echo_text: str  # what tools/call echo {"message": "hi"} answers
    slow: dict[str, Any]  # a tools/call taking 30 s


def mcp_server(kind: str) -> McpServer:
    if kind == "everything":
        node = need_everything()
        return McpServer((node, EVERYTHING, "stdio"), "mcp-servers/everything", "Echo: hi",
                         {"name": "trigger-long-running-operation",
                          "arguments": {"duration": 30, "steps": 30}})
    need_pypi("mcp")
    return McpServer((str(VENV_PY), SDK_SERVER), "pipevisor-sdk-test", "hi",
                     {"name": "sleep", "arguments": {"seconds": 30}})


def spec(name: str, command: tuple[str, ...], preset: Preset, **overrides: Any) -> PluginSpec:
    return replace(fake_spec(name), command=command, preset=preset, **overrides)


def plugin_pid(sup: Supervisor, name: str) -> int:
    pid = sup.plugin_status(name)["pid"]
    assert isinstance(pid, int) and pid > 1
    return pid


async def restarted(sup: Supervisor, name: str, timeout: float) -> None:
    runner = sup.runner(name)
    await wait_for(lambda: runner.instance == 2 and runner.state is PluginState.READY,
                   timeout, f"{name} restarted and ready")


def tool_names(result: Any) -> list[str]:
    return [tool["name"] for tool in result["tools"]]


async def echo(sup: Supervisor, name: str, timeout: float = 10) -> str:
    result = await sup.call(name, "tools/call", {"name": "echo",
                                                  "arguments": {"message": "hi"}},
                            timeout=timeout)
    assert result.get("isError") is not True, result
    text = result["content"][0]["text"]
    assert isinstance(text, str)
    return text


MCP_KINDS = pytest.mark.parametrize("kind", ["everything", "sdk"])


@MCP_KINDS
async def test_mcp_start_and_calls(kind: str) -> None:
    server = mcp_server(kind)
    async with Supervisor([spec("m", server.command, Preset.MCP)]) as sup:
        await sup.runner("m").wait_state({PluginState.READY}, 20)
        status = sup.plugin_status("m")
        assert status["state"] == "ready" and status["degradations"] == []
        assert status["server"]["protocolVersion"] in MCP_VERSIONS
        assert status["server"]["serverInfo"]["name"] == server.server_name
        assert "tools" in status["server"]["capabilities"]
        assert "echo" in tool_names(await sup.call("m", "tools/list", timeout=10))
        assert await echo(sup, "m") == server.echo_text
        assert await sup.call("m", "ping", timeout=10) == {}


@MCP_KINDS
async def test_mcp_sigkill_then_calls_after_the_replayed_initialize(
        kind: str, tmp_path: Path) -> None:
    server = mcp_server(kind)
    record = tmp_path / "in.jsonl"
    command = (sys.executable, TEE, str(record), *server.command)
    async with Supervisor([spec("m", command, Preset.MCP)]) as sup:
        await sup.wait_ready(timeout=20)
        assert await echo(sup, "m") == server.echo_text
        # the server itself, the wrapper's child: its death ends the wrapper too
        children = psutil.Process(plugin_pid(sup, "m")).children()
        assert len(children) == 1
        children[0].send_signal(signal.SIGKILL)
        await restarted(sup, "m", 20)
        assert "echo" in tool_names(await sup.call("m", "tools/list", timeout=10))
        assert await echo(sup, "m") == server.echo_text
    methods = [m.get("method") for m in read_record(record)]
    assert methods.count("initialize") == 2
    assert methods.count("notifications/initialized") == 2
    second = methods.index("initialize", methods.index("initialize") + 1)
    assert methods[second + 1] == "notifications/initialized"


@MCP_KINDS
async def test_mcp_sigkill_of_the_plugin_process(kind: str) -> None:
    server = mcp_server(kind)
    async with Supervisor([spec("m", server.command, Preset.MCP)]) as sup:
        await sup.wait_ready(timeout=20)
        pid = plugin_pid(sup, "m")
        os.kill(pid, signal.SIGKILL)
        await restarted(sup, "m", 20)
        assert plugin_pid(sup, "m") != pid
        assert sup.plugin_status("m")["server"]["serverInfo"]["name"] == server.server_name
        assert await echo(sup, "m") == server.echo_text


@MCP_KINDS
async def test_mcp_a_timed_out_call_is_cancelled_at_the_server(
        kind: str, tmp_path: Path) -> None:
    server = mcp_server(kind)
    record = tmp_path / "in.jsonl"
    command = (sys.executable, TEE, str(record), *server.command)
    async with Supervisor([spec("m", command, Preset.MCP)]) as sup:
        await sup.wait_ready(timeout=20)
        with pytest.raises(CallTimeout):
            await sup.call("m", "tools/call", server.slow, timeout=1)
        slow: list[dict[str, Any]] = []
        cancels: list[dict[str, Any]] = []

        def cancelled() -> bool:
            sent = read_record(record)
            slow[:] = [m for m in sent if m.get("method") == "tools/call"]
            cancels[:] = [m for m in sent if m.get("method") == "notifications/cancelled"]
            return bool(cancels)

        await wait_for(cancelled, 10, "notifications/cancelled to reach the server")
        assert len(slow) == 1
        assert cancels[0]["params"] == {"requestId": slow[0]["id"], "reason": "timeout"}
        # the one call slot (the MCP default) is free again well before the 30 s work
        assert await echo(sup, "m", timeout=10) == server.echo_text
        assert sup.runner("m").instance == 1


@MCP_KINDS
async def test_mcp_a_stopped_server_is_found_by_ping_and_restarted(kind: str) -> None:
    server = mcp_server(kind)
    health = HealthPolicy(handshake_timeout=20, ping_interval=0.3, ping_timeout=1.5)
    async with Supervisor([spec("m", server.command, Preset.MCP, health=health)]) as sup:
        await sup.wait_ready(timeout=20)
        runner = sup.runner("m")
        pid = plugin_pid(sup, "m")
        with stopped(pid):
            await restarted(sup, "m", 30)
        assert runner.last_exit is not None
        assert plugin_pid(sup, "m") != pid
        assert await echo(sup, "m") == server.echo_text


# ---------------------------------------------------------------- LSP (pylsp)

SOURCE = "import os\nos.path.join\nos.\n"


def pylsp_command() -> tuple[str, ...]:
    need_pypi("python-lsp-server")
    return (str(PYLSP),)


def lsp_record(path: Path) -> list[dict[str, Any]]:
    """The messages in a Content-Length framed byte stream (complete ones only)."""
    data = path.read_bytes() if path.exists() else b""
    out = []
    while (end := data.find(b"\r\n\r\n")) >= 0:
        headers = dict(line.split(b":", 1) for line in data[:end].split(b"\r\n"))
        length = int(headers[b"Content-Length"])
        body = data[end + 4:end + 4 + length]
        if len(body) < length:
            break
        out.append(json.loads(body))
        data = data[end + 4 + length:]
    return out


async def open_document(sup: Supervisor, name: str, root: Path) -> str:
    path = root / "a.py"
    path.write_text(SOURCE)
    uri = path.as_uri()
    await sup.notify(name, "textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "python", "version": 1, "text": SOURCE}})
    return uri


async def hover_join(sup: Supervisor, name: str, uri: str, timeout: float = 20) -> str:
    result = await sup.call(name, "textDocument/hover", {
        "textDocument": {"uri": uri}, "position": {"line": 1, "character": 9}},
        timeout=timeout)
    contents = result["contents"]
    text = json.dumps(contents)
    assert "join" in text, contents
    return text


async def test_pylsp_start_open_hover_complete_and_stop(tmp_path: Path) -> None:
    command = pylsp_command()
    async with Supervisor([spec("l", command, Preset.LSP, cwd=str(tmp_path))]) as sup:
        runner = sup.runner("l")
        await runner.wait_state({PluginState.READY}, 20)
        status = sup.plugin_status("l")
        assert status["state"] == "ready" and status["preset"] == "lsp"
        assert status["server"]["serverInfo"]["name"] == "pylsp"
        assert status["server"]["capabilities"]["hoverProvider"] is True
        uri = await open_document(sup, "l", tmp_path)
        await hover_join(sup, "l", uri)
        completion = await sup.call("l", "textDocument/completion", {
            "textDocument": {"uri": uri}, "position": {"line": 2, "character": 3}},
            timeout=20)
        items = completion["items"] if isinstance(completion, dict) else completion
        assert "path" in [item["label"] for item in items]
        sup.stop("l")
        await runner.wait_state({PluginState.STOPPED}, 20)
        # shutdown then exit: pylsp exits 0 on its own, not by a signal
        assert runner.last_exit is not None and runner.last_exit["returncode"] == 0


async def test_pylsp_sigkill_then_calls_after_the_replayed_initialize(
        tmp_path: Path) -> None:
    record = tmp_path / "in.lsp"
    command = (sys.executable, TEE, str(record), *pylsp_command())
    async with Supervisor([spec("l", command, Preset.LSP, cwd=str(tmp_path))]) as sup:
        await sup.wait_ready(timeout=20)
        uri = await open_document(sup, "l", tmp_path)
        await hover_join(sup, "l", uri)
        children = psutil.Process(plugin_pid(sup, "l")).children()
        assert len(children) == 1
        children[0].send_signal(signal.SIGKILL)
        await restarted(sup, "l", 20)
        # a new server knows no documents: open it again, as an LSP client does
        uri = await open_document(sup, "l", tmp_path)
        await hover_join(sup, "l", uri)
    methods = [m.get("method") for m in lsp_record(record)]
    assert methods.count("initialize") == 2 and methods.count("initialized") == 2


async def test_pylsp_a_timed_out_call_is_cancelled_at_the_server(tmp_path: Path) -> None:
    record = tmp_path / "in.lsp"
    command = (sys.executable, TEE, str(record), *pylsp_command())
    async with Supervisor([spec("l", command, Preset.LSP, cwd=str(tmp_path))]) as sup:
        await sup.wait_ready(timeout=20)
        uri = await open_document(sup, "l", tmp_path)
        await hover_join(sup, "l", uri)
        # pylsp answers a hover in milliseconds: stopped, it cannot, so the call times
        # out for sure; the cancel waits in its stdin and is read once it runs again
        children = psutil.Process(plugin_pid(sup, "l")).children()
        assert len(children) == 1
        server = children[0]
        with stopped(server.pid):
            with pytest.raises(CallTimeout):
                await sup.call("l", "textDocument/hover", {
                    "textDocument": {"uri": uri},
                    "position": {"line": 1, "character": 9}}, timeout=0.5)
            cancels: list[dict[str, Any]] = []

            def cancelled() -> bool:
                cancels[:] = [m for m in lsp_record(record)
                              if m.get("method") == "$/cancelRequest"]
                return bool(cancels)

            await wait_for(cancelled, 10, "$/cancelRequest to reach the server")
        hovers = [m for m in lsp_record(record) if m.get("method") == "textDocument/hover"]
        assert cancels[0]["params"] == {"id": hovers[-1]["id"]}
        # the server read it and goes on serving; its answer to the cancelled call is
        # dropped, not a fault
        await hover_join(sup, "l", uri)
        assert sup.runner("l").instance == 1 and sup.runner("l").faults == 0
