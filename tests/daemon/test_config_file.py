"""The TOML loader: every key reaches the dataclasses, every mistake is named by file and
dotted key, defaults and discovery combine as docs/configuration.md says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pipevisor.supervisor.daemon.config_file import LogFormat, load, parse, socket_path
from pipevisor.supervisor.engine.config import PluginMode
from pipevisor.supervisor.engine.limits import LimitAction
from pipevisor.supervisor.engine.policy import RestartMode
from pipevisor.supervisor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MISBEHAVING = ROOT / "examples" / "misbehaving"


def plugin_dir(tmp_path: Path, *names: str) -> str:
    """A PATH folder holding pipevisor-<name> links to the misbehaving examples."""
    folder = tmp_path / "bin"
    folder.mkdir(mode=0o755)
    for name in names:
        (folder / f"pipevisor-{name}").symlink_to(MISBEHAVING / f"pipevisor-{name}")
    return str(folder)


def refused(data: dict[str, object], *, path_env: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        parse(data, source="/etc/pv.toml", path_env=path_env)
    return str(info.value)


def test_the_reference_example_parses(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    example = re.search(r"## Example\n\n```toml\n(.*?)```", text, re.S)
    assert example is not None
    cfg_file = tmp_path / "pv.toml"
    cfg_file.write_text(example.group(1))
    cfg = load(str(cfg_file), path_env=plugin_dir(tmp_path, "leaky", "spinner", "hangs"))
    specs = {s.name: s for s in cfg.supervisor.plugins}
    assert set(specs) == {"echo", "leaky", "spinner", "mcp-files"}  # hangs disabled
    assert specs["echo"].env["ECHO_PREFIX"] == ">"
    assert specs["echo"].calls.timeout == 10.0  # from [defaults]
    leaky = specs["leaky"].limits.memory
    assert leaky is not None and leaky.max == 200 * 2**20
    assert leaky.action is LimitAction.RESTART
    assert specs["leaky"].command == (str(tmp_path / "bin" / "pipevisor-leaky"),)
    cpu = specs["spinner"].limits.cpu
    assert cpu is not None and cpu.action is LimitAction.THROTTLE
    mcp = specs["mcp-files"]
    assert mcp.mode is PluginMode.RAW
    assert mcp.command == ("/usr/local/bin/files-server", "--root", "/srv")
    assert [s.method for s in mcp.start_sequence] == ["initialize", "notifications/initialized"]
    assert mcp.start_sequence[1].notify is True
    assert cfg.daemon.log_format is LogFormat.TEXT
    assert cfg.discovery.dirs == (str(tmp_path / "plugins"),)


def test_defaults_merge_key_by_key_into_listed_and_discovered_plugins(tmp_path: Path) -> None:
    cfg = parse({
        "defaults": {"restart": {"max_restarts": 1, "mode": "on-failure"}},
        "plugins": {"crashy": {"restart": {"max_restarts": 9}},
                    "own": {"command": ["x"]}},
    }, path_env=plugin_dir(tmp_path, "crashy", "garbage"))
    specs = {s.name: s for s in cfg.supervisor.plugins}
    assert set(specs) == {"crashy", "own", "garbage"}
    assert specs["crashy"].restart.max_restarts == 9
    assert specs["crashy"].restart.mode is RestartMode.ON_FAILURE  # kept from defaults
    assert specs["garbage"].restart.max_restarts == 1
    assert specs["own"].restart.max_restarts == 1
    assert specs["own"].command == ("x",)


def test_no_file_is_discovery_with_default_policies(tmp_path: Path) -> None:
    cfg = load(None, path_env=plugin_dir(tmp_path, "crashy"))
    assert [s.name for s in cfg.supervisor.plugins] == ["crashy"]
    assert cfg.supervisor.plugins[0].limits.memory is None
    assert cfg.source is None


@pytest.mark.parametrize(("data", "message"), [
    ({"plugin": {}}, "/etc/pv.toml: plugin: unknown key"),
    ({"plugins": {"e": {"command": ["x"], "restart": {"max_restart": 1}}}},
     "plugins.e.restart.max_restart: unknown key (known: "),
    ({"plugins": {"e": {"command": ["x"], "calls": {"timeout": "5s"}}}},
     "plugins.e.calls.timeout: expected a number, got '5s'"),
    ({"plugins": {"e": {"command": ["x"], "restart": {"max_restarts": 1.5}}}},
     "plugins.e.restart.max_restarts: expected an integer"),
    ({"plugins": {"e": {"command": ["x"], "autostart": "yes"}}},
     "plugins.e.autostart: expected true or false"),
    ({"plugins": {"e": {"command": ["x"], "mode": "fast"}}},
     "plugins.e.mode: expected one of 'auto', 'pipevisor', 'raw'"),
    ({"plugins": {"e": {"command": ["x"], "limits": {"memory": {"max": "lots"}}}}},
     "plugins.e.limits.memory.max: 'lots' is not a size"),
    ({"plugins": {"e": {"command": ["x"], "limits": {"fds": {"max": 10, "action": "throttle"}}}}},
     "plugins.e.limits: limits: fds cannot be throttled"),
    ({"plugins": {"e": {"command": ["x"], "restart": {"jitter": 2}}}},
     "plugins.e.restart: jitter must be in [0, 1)"),
    ({"plugins": {"e": {"command": ["x"], "env": {"A": 1}}}}, "plugins.e.env.A: expected a string"),
    ({"plugins": {"e": {"command": "x y"}}}, "plugins.e.command: expected a list"),
    ({"plugins": {"e": {"command": []}}}, "plugins.e.command: must not be empty"),
    ({"plugins": {"e": {"command": ["x"], "path": "y"}}}, "plugins.e: give either command or path"),
    ({"plugins": {"e": {}}}, "plugins.e: no command or path given"),
    ({"plugins": {"bad name": {"command": ["x"]}}}, "plugin name 'bad name' is invalid"),
    ({"plugins": {"e": 3}}, "plugins.e: expected a table"),
    ({"defaults": {"command": ["x"]}}, "defaults.command: only allowed in a [plugins.<name>]"),
    ({"defaults": {"stop": {"grace": 1}}}, "defaults.stop.grace: unknown key"),
    ({"daemon": {"log_level": "loud"}}, "daemon.log_level: expected one of"),
    ({"discovery": {"prefix": "a/b"}}, "discovery.prefix: discovery prefix must be"),
    ({"supervisor": {"sample_interval": -1}}, "supervisor: sample_interval must be >= 0"),
    ({"supervisor": {"plugins": []}}, "supervisor.plugins: unknown key"),
])
def test_mistakes_are_named_by_file_and_dotted_key(data: dict[str, object],
                                                   message: str) -> None:
    text = refused({"discovery": {"enabled": False}, **data}
                   if "discovery" not in data else data)
    assert text.startswith("/etc/pv.toml: ")
    assert message in text


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[plugins.x\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load(str(bad))


def test_sizes_and_relative_paths(tmp_path: Path) -> None:
    cfg_file = tmp_path / "pv.toml"
    cfg_file.write_text('[discovery]\nenabled = false\n'
                        '[plugins.a]\npath = "bin/a"\nargs = ["-v"]\nmax_line_bytes = "1MiB"\n'
                        'limits.memory.max = "1.5 GB"\n')
    spec = load(str(cfg_file)).supervisor.plugins[0]
    assert spec.command == (str(tmp_path / "bin" / "a"), "-v")
    assert spec.max_line_bytes == 2**20
    assert spec.limits.memory is not None and spec.limits.memory.max == 1.5e9


def test_socket_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse({"daemon": {"socket": "/from/file"}, "discovery": {"enabled": False}})
    monkeypatch.setenv("PIPEVISOR_SOCKET", "/from/env")
    assert socket_path("/from/cli", cfg) == "/from/cli"
    assert socket_path(None, cfg) == "/from/env"
    monkeypatch.delenv("PIPEVISOR_SOCKET")
    assert socket_path(None, cfg) == "/from/file"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    plain = parse({"discovery": {"enabled": False}})
    assert socket_path(None, plain) == "/run/user/7/pipevisor/control.sock"


def test_every_plugin_field_is_reachable_from_toml() -> None:
    """A field added to PluginSpec must be settable from the file (or be excluded on
    purpose): the generic converter has to understand its type."""
    from dataclasses import fields

    from pipevisor.supervisor.engine.config import PluginSpec
    names = [f.name for f in fields(PluginSpec) if f.name not in ("name", "command")]
    toml_doc = tomllib.loads("[discovery]\nenabled = false\n[plugins.a]\ncommand = ['x']\n")
    cfg = parse(toml_doc)
    spec = cfg.supervisor.plugins[0]
    for name in names:
        value = getattr(spec, name)
        if value is None:  # TOML has no null: leaving the key out is how None is said
            continue
        table = {"discovery": {"enabled": False},
                 "plugins": {"a": {"command": ["x"], name: _to_toml(value)}}}
        assert getattr(parse(table).supervisor.plugins[0], name) == value, name


def _to_toml(value: object) -> object:
    """A dataclass value as the TOML table that would produce it."""
    from dataclasses import asdict, is_dataclass
    from enum import Enum
    from types import MappingProxyType

    if is_dataclass(value) and not isinstance(value, type):
        return {k: _to_toml(v) for k, v in asdict(value).items() if v is not None}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_to_toml(v) for v in value]
    if isinstance(value, (dict, MappingProxyType)):
        return {k: _to_toml(v) for k, v in value.items() if v is not None}
    return value


def test_a_switched_off_plugin_stays_loadable_by_name(tmp_path: Path) -> None:
    cfg = parse({"defaults": {"calls": {"timeout": 3}},
                 "plugins": {"hangs": {"enabled": False, "stop": {"term_grace": 0.5}}}},
                path_env=plugin_dir(tmp_path, "hangs", "crashy"))
    assert [s.name for s in cfg.supervisor.plugins] == ["crashy"]
    spec = cfg.loadable("hangs")
    assert spec is not None and spec.command == (str(tmp_path / "bin" / "pipevisor-hangs"),)
    assert spec.stop.term_grace == 0.5 and spec.calls.timeout == 3
    assert cfg.loadable("crashy") is cfg.supervisor.plugins[0]
    assert cfg.loadable("nothing") is None
