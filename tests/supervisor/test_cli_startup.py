"""The control commands (``pipevisor status``, ``call`` ...) start without loading the
engine: they only talk to the daemon's socket. And the lazy package still gives embedders
every public name."""

from __future__ import annotations

import subprocess
import sys

from pipevisor import supervisor
from pipevisor.supervisor.cli import plugins as cli_plugins
from pipevisor.supervisor.tools import discovery

HEAVY = ("pipevisor.supervisor.engine.supervisor", "pipevisor.supervisor.engine.runner",
         "pipevisor.supervisor.tools.checker", "pipevisor.supervisor.engine.config",
         "jsonschema", "psutil")
"""Modules a control command has no use for (each costs milliseconds at every start)."""


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    return set(out.stdout.split())


def test_the_cli_does_not_import_the_engine() -> None:
    loaded = _loaded_after("import pipevisor.supervisor.cli.main")
    assert "pipevisor.supervisor.cli.control" in loaded  # the probe did import the CLI
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_control_command_run_does_not_import_the_engine() -> None:
    # no daemon on that socket: exit 3, after parsing and trying to connect
    loaded = _loaded_after(
        "from pipevisor.supervisor.cli.main import main\n"
        "try:\n"
        "    main(['status', '--socket', '/nonexistent/pipevisor.sock'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 3, e.code")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_every_public_name_imports() -> None:
    for name in supervisor.__all__:
        assert getattr(supervisor, name).__name__ == name
    assert {"Limit", "Limits", "LimitAction", "Adapter", "AdapterSpec", "PluginMode",
            "StartStep"} <= set(supervisor.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        supervisor.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("supervisor.NoSuchThing did not raise")


def test_the_list_prefix_shown_in_help_is_discoverys() -> None:
    assert cli_plugins._DEFAULT_PREFIX == discovery.DEFAULT_PREFIX
