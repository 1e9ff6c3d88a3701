"""The public names, pinned (#18): a change to what users import must change this file
too. pipevisor.supervisor keeps its names in three places because each has a reader
(the TYPE_CHECKING imports for type checkers, ``_HOME`` for the lazy loader,
``__all__`` for star-imports and re-export rules); this test makes them one list."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SUPERVISOR_API = {
    "Adapter", "AdapterSpec", "CallCancelled", "CallError", "CallPolicy", "CallTimeout",
    "ConfigError", "HealthPolicy", "InvalidResponse", "Limit", "LimitAction", "Limits",
    "LocalCallError", "MethodUnavailable", "OverLimit", "PipevisorError", "PluginCrashed",
    "PluginError", "PluginMode", "PluginSpec", "PluginState", "PluginUnavailable",
    "ProtocolErrorAction", "QueueFull", "RestartMode", "RestartPolicy", "StartStep",
    "StopPolicy", "Supervisor", "SupervisorConfig", "SupervisorEvent",
}
CLIENT_API = {
    "AccessDenied", "AsyncClient", "BadAnswer", "Client", "ControlError", "DaemonBusy",
    "DaemonConnectionLost", "DaemonNotRunning", "EventsLagged", "UntrustedDaemon",
    "resolve_socket_path",
}


@pytest.mark.parametrize(("module", "names"), [
    ("pipevisor.supervisor", SUPERVISOR_API),
    ("pipevisor.supervisor.client", CLIENT_API),
])
def test_all_is_pinned_and_every_name_resolves(module: str, names: set[str]) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == names
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in names:
        assert getattr(mod, name).__name__ == name


def test_the_three_lists_of_the_front_door_agree() -> None:
    tree = ast.parse((ROOT / "supervisor" / "__init__.py").read_text("utf-8"))
    typed: dict[str, str] = {}
    home: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                typed.update({alias.name: imp.module for alias in imp.names})
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_HOME":
            home = ast.literal_eval(node.value) if node.value else {}
    assert typed == home
    assert set(home) == SUPERVISOR_API


def test_every_event_kind_is_documented_and_none_is_invented() -> None:
    from pipevisor.supervisor.engine.events import EventKind

    text = (ROOT / "docs" / "cli.md").read_text("utf-8")
    rows = {line.split("`")[1] for line in text.splitlines()
            if line.startswith("  | `") and "|" in line[4:]}
    assert rows == {kind.value for kind in EventKind}


def test_a_misspelt_kind_is_refused_where_it_is_made() -> None:
    from pipevisor.supervisor.engine.events import EventKind, SupervisorEvent

    assert SupervisorEvent("p", "exit").kind is EventKind.EXIT  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exitt"):
        SupervisorEvent("p", "exitt")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_status_record_is_what_status_returns() -> None:
    """#18: status() was an untyped dict the CLI and the socket depended on; its keys
    are now the PluginStatus record's, checked here against a running plugin."""
    from pipevisor.supervisor import Supervisor
    from pipevisor.supervisor.records import PluginStatus
    from tests.supervisor.fake import fake_spec

    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        (plain,) = sup.status()
        (full,) = await sup.status_with_usage()
    assert set(plain) == PluginStatus.__required_keys__
    assert set(full) == PluginStatus.__required_keys__ | PluginStatus.__optional_keys__
