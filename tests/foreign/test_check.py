"""`pipevisor check` by preset (tools/checker.py, CheckOptions.preset) against the test
servers: MCP initialize, tools/list, ping, cancel honoured, exit on EOF; LSP initialize,
cancel, shutdown and exit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipevisor.supervisor.tools.checker import CheckOptions, Status, check_plugin, report_text

pytestmark = pytest.mark.anyio

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


async def test_an_mcp_server_passes_by_its_preset() -> None:
    opts = CheckOptions(preset="mcp", slow_method="tools/call",
                        slow_params={"name": "sleep", "arguments": {"seconds": 5}})
    report = await check_plugin((sys.executable, str(PLUGINS / "mcp_like.py")), opts)
    text = report_text(report)
    assert report.ok, text
    for name in ("initialize", "tools/list", "ping", "cancel honoured",
                 "exit on end of input"):
        assert report.get(name).status is Status.PASS, text
    assert "2025-06-18" in report.get("initialize").detail


async def test_an_mcp_server_with_versions_pipevisor_lacks_fails() -> None:
    report = await check_plugin((sys.executable, str(PLUGINS / "mcp_like.py"), "--versions",
                                 "1999-01-01"), CheckOptions(preset="mcp"))
    assert report.get("initialize").status is Status.FAIL
    assert report.get("ping").status is Status.SKIP


async def test_a_language_server_passes_by_its_preset() -> None:
    opts = CheckOptions(preset="lsp", slow_method="sleep", slow_params={"seconds": 5})
    report = await check_plugin((sys.executable, str(PLUGINS / "lsp_like.py")), opts)
    text = report_text(report)
    assert report.ok, text
    for name in ("initialize", "cancel honoured", "shutdown", "exit"):
        assert report.get(name).status is Status.PASS, text
    assert "-32800" in report.get("cancel honoured").detail


async def test_checked_as_a_plugin_a_server_is_pointed_at_the_preset() -> None:
    report = await check_plugin((sys.executable, str(PLUGINS / "mcp_like.py")))
    handshake = report.get("handshake")
    assert handshake.status is Status.FAIL and "--preset mcp" in handshake.hint


def test_the_command_line_takes_the_preset() -> None:
    """`pipevisor check --preset mcp` reaches the preset checks (the plugin's arguments
    after --)."""
    from click.testing import CliRunner

    from pipevisor.supervisor.cli.main import main

    res = CliRunner().invoke(main, [
        "check", sys.executable, "--preset", "mcp", "--slow-method", "tools/call",
        "--slow-params", '{"name": "sleep", "arguments": {"seconds": 5}}',
        "--", str(PLUGINS / "mcp_like.py")])
    assert res.exit_code == 0, res.output
    assert "PASS  tools/list" in res.output and "PASS  initialize" in res.output
