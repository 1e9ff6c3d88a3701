"""The console script's non-daemon commands."""

from __future__ import annotations

from pathlib import Path

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


def test_verify_checks_a_configuration_without_running_it(tmp_path: Path) -> None:
    """#19: an offline check like `nginx -t`: 0 and the plugins that would start, or 2
    and the key at fault; nothing is started either way."""
    import sys

    from click.testing import CliRunner

    good = tmp_path / "good.toml"
    good.write_text(f'[plugins.echo]\ncommand = ["{sys.executable}", "-c", "pass"]\n')
    res = CliRunner().invoke(main, ["verify", "--config", str(good)])
    assert res.exit_code == 0, res.output
    assert "ok, 1 plugin(s) would start" in res.output and "echo" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[plugins.echo]\ncommand = 3\n')
    res = CliRunner().invoke(main, ["verify", "--config", str(bad), "--json"])
    assert res.exit_code == 2
    assert "plugins.echo.command" in res.output


def test_verify_takes_the_file_as_an_argument_too(tmp_path: Path) -> None:
    """`pipevisor verify FILE`, as `nginx -t -c FILE` users type it; FILE and a
    different --config together are refused rather than one silently winning."""
    import sys

    from click.testing import CliRunner

    good = tmp_path / "good.toml"
    good.write_text(f'[plugins.echo]\ncommand = ["{sys.executable}", "-c", "pass"]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[plugins.echo]\ncommand = 3\n')
    res = CliRunner().invoke(main, ["verify", str(good)])
    assert res.exit_code == 0 and "ok, 1 plugin(s) would start" in res.output, res.output
    assert CliRunner().invoke(main, ["verify", str(bad)]).exit_code == 2
    both = CliRunner().invoke(main, ["verify", str(good), "--config", str(bad)])
    assert both.exit_code == 2 and "give the file once" in both.output
