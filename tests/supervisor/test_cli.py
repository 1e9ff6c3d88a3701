"""The console script's non-daemon commands."""

from __future__ import annotations

import orjson
from click.testing import CliRunner

from pipevisor.supervisor.cli.main import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("pipevisor, version ")


def test_spec_prints_the_protocol_spec() -> None:
    result = CliRunner().invoke(main, ["spec"])
    assert result.exit_code == 0
    assert "pipevisor/handshake" in result.output


def test_containment_json() -> None:
    result = CliRunner().invoke(main, ["containment", "--json"])
    assert result.exit_code == 0
    info = orjson.loads(result.output)
    assert info["mechanism"] in ("pidns", "session+pdeathsig", "session")
    assert info["detail"]
