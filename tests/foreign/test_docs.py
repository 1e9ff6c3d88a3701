"""Every TOML example in docs/foreign-servers.md loads into the specs it describes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pipevisor.supervisor.daemon.config_file import parse
from pipevisor.supervisor.engine import presets
from pipevisor.supervisor.engine.config import Framing, PluginMode, Preset

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "foreign-servers.md"


def examples() -> list[dict[str, object]]:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    return [tomllib.loads("[discovery]\nenabled = false\n" + b) for b in blocks]


def test_the_quick_start_configs_load_as_documented() -> None:
    specs = {s.name: s for s in parse(examples()[0]).supervisor.plugins}
    assert set(specs) == {"everything", "fetch", "files", "pylsp"}
    assert all(s.mode is PluginMode.RAW for s in specs.values())
    assert presets.settings(specs["everything"]).max_in_flight == 1
    assert presets.settings(specs["files"]).max_in_flight == 4
    assert specs["files"].server.answers["roots/list"]["roots"][0]["name"] == "data"
    lsp = presets.settings(specs["pylsp"])
    assert specs["pylsp"].preset is Preset.LSP and lsp.framing is Framing.CONTENT_LENGTH
    assert [s.method for s in lsp.stop_sequence] == ["shutdown", "exit"]


def test_the_generic_server_example_loads() -> None:
    spec = parse(examples()[1]).supervisor.plugins[0]
    server = presets.settings(spec)
    assert server.cancel_message(7, "timeout") == ("abort", {"request": 7})
    assert server.ping_method == "status" and spec.health.ping_interval == 5
    assert [s.method for s in server.stop_sequence] == ["close", "quit"]
