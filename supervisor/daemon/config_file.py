"""The daemon's TOML configuration file -> the same frozen dataclasses embedding code builds.

Why a generic converter: the tables of the file mirror the dataclasses in
``supervisor/engine/config.py`` field for field, so the converter walks those
dataclasses and their type hints instead of listing keys by hand. A field added
to ``PluginSpec`` (or any policy it holds) is configurable from TOML the moment
it exists, with the same type checking and the same error format.

Every problem is reported as ``FILE: dotted.key: reason`` and the whole file is
refused: the daemon never runs half-configured. The reference for every key is
docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import enum
import grp
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipevisor.supervisor import paths
from pipevisor.supervisor.engine.config import PluginSpec, SupervisorConfig
from pipevisor.supervisor.errors import ConfigError
from pipevisor.supervisor.tools.discovery import DiscoveryConfig, DiscoveryResult, discover


class LogFormat(enum.StrEnum):
    TEXT = "text"
    """Readable lines; with ``<N>`` priority prefixes instead of timestamps under journald."""
    JSON = "json"
    """One JSON object per line (ts, level, logger, plugin, msg)."""


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The ``[daemon]`` table: how ``pipevisor run`` itself behaves."""

    socket: str | None = None
    """Control socket path; default ``$XDG_RUNTIME_DIR/pipevisor/control.sock``."""
    log_format: LogFormat = LogFormat.TEXT
    log_level: LogLevel = LogLevel.INFO
    ready_timeout: float = 30.0
    """How long start-up (and a reload) waits for plugins before reporting READY anyway."""
    metrics_listen: str | None = None
    """``HOST:PORT`` to serve Prometheus metrics on over HTTP (``GET /metrics``); off
    by default. ``[::1]:9464`` for IPv6."""
    control_max_connections: int = 128
    """Control-socket connections at once; at the cap the longest-idle one is closed
    to make room, or the new one is refused as busy (docs/bounds.md)."""
    control_idle_timeout: float = 60.0
    """Seconds after which a control connection with nothing in flight or followed is
    closed (clients reconnect by themselves)."""
    metrics_max_connections: int = 64
    """HTTP connections at once to ``metrics_listen``; past it, 503."""
    plugin_log_dir: str | None = None
    """A folder where each plugin's own lines (stderr, ``pipevisor/log``) also go, one
    file per plugin (``NAME.log``), rotated at ``plugin_log_max_bytes`` keeping
    ``plugin_log_backups`` old files. Must pass the runtime-dir rule (ours, closed to
    other writers); created 0700 if missing. Unset: the daemon's own log only."""
    plugin_log_max_bytes: int = 10 << 20
    plugin_log_backups: int = 3
    socket_group: str | None = None
    """A group whose members may use the control socket besides the daemon's own user
    and root: the socket becomes 0660 with that group. Unset: 0600, owner and root only
    (docs/cli.md, "Who may use the socket")."""

    def __post_init__(self) -> None:
        if self.control_max_connections < 1 or self.metrics_max_connections < 1:
            raise ValueError("control_max_connections and metrics_max_connections must be "
                             "at least 1")
        if self.plugin_log_max_bytes < 4096 or self.plugin_log_backups < 1:
            # (logging's rotation never rotates with no backups: the file would grow)
            raise ValueError("plugin_log_max_bytes must be at least 4096 and "
                             "plugin_log_backups at least 1")
        if not self.control_idle_timeout > 0:
            raise ValueError("control_idle_timeout must be a positive number of seconds")
        if self.socket_group is not None:
            socket_group_id(self.socket_group)


def socket_group_id(name: str) -> int:
    """The gid of ``[daemon] socket_group`` (a name, or a number); ValueError if unknown."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ValueError(f"socket_group: no group named {name!r} on this system") from None


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) -> (host, port); ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"port must be a number from 0 (any free port) to 65535, "
                         f"got {port!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """The ``[discovery]`` table: which executables become plugins without being listed."""

    enabled: bool = True
    prefix: str = "pipevisor-"
    use_path: bool = True
    dirs: tuple[str, ...] = ()
    """Extra folders searched before PATH (relative ones are relative to the file)."""


@dataclass(frozen=True)
class DaemonConfig:
    """A whole, checked configuration (the file's, or the built-in default)."""

    supervisor: SupervisorConfig
    daemon: DaemonSettings
    discovery: DiscoverySettings
    source: str | None
    """The file read, or None for the built-in default."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """The raw ``[defaults]`` table (already checked), applied to run-time ``load``s too."""
    discovered: DiscoveryResult | None = None
    tables: Mapping[str, Any] = field(default_factory=dict)
    """The raw ``[plugins.*]`` tables, disabled ones included (for ``load`` by name)."""

    def loadable(self, name: str) -> PluginSpec | None:
        """The spec ``pipevisor load NAME`` gets: a configured plugin, or a discovered one
        (even one switched off with ``enabled = false``) with its table and the defaults."""
        for spec in self.supervisor.plugins:
            if spec.name == name:
                return spec
        found = self.discovered.by_name().get(name) if self.discovered else None
        if found is None:
            return None
        table = self.tables.get(name, {})
        try:
            return plugin_spec(name, (found.path, *table.get("args", ())), table,
                               self.defaults, f"plugins.{name}")
        except _Bad as exc:
            raise ConfigError(f"{self.source or '<built-in default>'}: {exc}") from None


_TOP_KEYS = {"supervisor", "daemon", "discovery", "defaults", "plugins"}
_SUPERVISOR_SKIP = {"plugins"}
_SPEC_SKIP = {"name", "command"}
_PLUGIN_EXTRA = {"command", "path", "args", "enabled"}
_SIZE_KEYS = ("memory.max", "max_line_bytes", "stderr_tail_bytes", "log_bytes_per_second",
              "plugin_log_max_bytes")
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class _Bad(Exception):
    """A conversion failure at a dotted key; turned into ConfigError with the file name."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)


# ============================================================ generic converter

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "one of " + ", ".join(repr(m.value) for m in tp)
        if dataclasses.is_dataclass(tp):
            return "a table"
        return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                Path: "a path string"}.get(tp, tp.__name__)
    return str(tp)


def _size(value: str, where: str) -> int:
    m = _SIZE_RE.fullmatch(value)
    if not m:
        raise _Bad(where, f"{value!r} is not a size (use a number of bytes or e.g. '512MiB')")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])


def _convert(value: Any, tp: Any, where: str) -> Any:
    """TOML value -> an instance of type hint ``tp``; raises _Bad naming ``where``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:  # X | None: None is spelled by leaving the key out
            return _convert(value, arms[0], where)
        for arm in arms:
            try:
                return _convert(value, arm, where)
            except _Bad as exc:
                if str(exc).startswith((f"{where}.", f"{where}[")):
                    raise  # the value had the right shape; the problem is inside it
        raise _Bad(where, "expected " + " or ".join(_type_name(a) for a in arms)
                   + f", got {value!r}")
    if origin in (tuple, Sequence, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise _Bad(where, f"expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return tuple(_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is dict:
        args = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise _Bad(where, f"expected a table, got {value!r}")
        return {_convert(k, args[0], where): _convert(v, args[1], f"{where}.{k}")
                for k, v in value.items()}
    if not isinstance(tp, type):
        raise _Bad(where, f"cannot be set from a configuration file (type {tp})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Bad(where, f"expected a table, got {value!r}")
        return _dataclass(tp, value, where)
    if issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _Bad(where, f"expected {_type_name(tp)}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise _Bad(where, f"expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str) and where.endswith(_SIZE_KEYS):
            value = _size(value, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                tp is int and not isinstance(value, int)):
            raise _Bad(where, f"expected {_type_name(tp)}, got {value!r}")
        return tp(value)
    if tp in (str, Path):
        if not isinstance(value, str):
            raise _Bad(where, f"expected a string, got {value!r}")
        return tp(value)
    raise _Bad(where, f"cannot be set from a configuration file (type {tp.__name__})")


def _dataclass(cls: type, table: Mapping[str, Any], where: str,
               skip: frozenset[str] | set[str] = frozenset(),
               extra: Mapping[str, Any] | None = None) -> Any:
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    kwargs: dict[str, Any] = dict(extra or {})
    prefix = f"{where}." if where else ""
    for key, value in table.items():
        if key not in fields:
            raise _Bad(f"{prefix}{key}", "unknown key (known: "
                       + ", ".join(sorted(fields)) + ")")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as exc:
        raise _Bad(where, str(exc)) from None


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins key by key; tables are merged recursively (so a plugin may change
    one restart setting and keep the defaults' others)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ============================================================ the file

def plugin_spec(name: str, command: Sequence[str], table: Mapping[str, Any],
                defaults: Mapping[str, Any], where: str) -> PluginSpec:
    """One plugin: the defaults with its own table over them."""
    merged = _merge(defaults, {k: v for k, v in table.items() if k not in _PLUGIN_EXTRA})
    spec: PluginSpec = _dataclass(PluginSpec, merged, where, skip=_SPEC_SKIP,
                                  extra={"name": name, "command": tuple(command)})
    return spec


def _relative(base: str | None, path: str) -> str:
    path = os.path.expanduser(path)
    return path if base is None or os.path.isabs(path) else os.path.join(base, path)


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _Bad(key, f"expected a table ([{key}]), got {value!r}")
    return value


def parse(data: Mapping[str, Any], *, source: str | None = None,
          path_env: str | None = None) -> DaemonConfig:
    """Check a parsed TOML document and build the configuration it describes.

    Discovery runs here (``path_env`` overrides ``$PATH``) so that the result is
    the complete set of plugins; a reload simply calls this again.
    """
    label = source or "<built-in default>"
    base = os.path.dirname(os.path.abspath(source)) if source else None
    try:
        for key in data:
            if key not in _TOP_KEYS:
                raise _Bad(key, "unknown key (known: " + ", ".join(sorted(_TOP_KEYS)) + ")")
        sup_table = _table(data, "supervisor")
        if isinstance(sup_table.get("interfaces"), str) and base:
            sup_table = {**sup_table, "interfaces": _relative(base, sup_table["interfaces"])}
        sup_base: SupervisorConfig = _dataclass(SupervisorConfig, sup_table, "supervisor",
                                                skip=_SUPERVISOR_SKIP)
        daemon: DaemonSettings = _dataclass(DaemonSettings, _table(data, "daemon"), "daemon")
        if daemon.metrics_listen is not None:
            try:
                listen_address(daemon.metrics_listen)
            except ValueError as exc:
                raise _Bad("daemon.metrics_listen", str(exc)) from None
        disc: DiscoverySettings = _dataclass(DiscoverySettings, _table(data, "discovery"),
                                             "discovery")
        if base:
            disc = dataclasses.replace(disc, dirs=tuple(_relative(base, d) for d in disc.dirs))
        defaults = _table(data, "defaults")
        for bad in _PLUGIN_EXTRA & defaults.keys():
            raise _Bad(f"defaults.{bad}", "only allowed in a [plugins.<name>] table")
        plugin_spec("defaults", ("true",), defaults, {}, "defaults")  # checked on its own

        found: DiscoveryResult | None = None
        if disc.enabled:
            try:
                found = discover(DiscoveryConfig(prefix=disc.prefix, use_path=disc.use_path,
                                                 dirs=disc.dirs), path=path_env)
            except ValueError as exc:
                raise _Bad("discovery.prefix", str(exc)) from None
        by_name = found.by_name() if found else {}

        specs: list[PluginSpec] = []
        tables = _table(data, "plugins")
        for name, table in tables.items():
            where = f"plugins.{name}"
            if not isinstance(table, dict):
                raise _Bad(where, f"expected a table ([{where}]), got {table!r}")
            if not _convert(table.get("enabled", True), bool, f"{where}.enabled"):
                continue  # switched off: may name a plugin that is not installed here
            command = _command(name, table, where, base, by_name)
            specs.append(plugin_spec(name, command, table, defaults, where))
        specs.extend(plugin_spec(p.name, (p.path,), {}, defaults,
                                 f"discovered plugin {p.name} ({p.path})")
                     for p in by_name.values() if p.name not in tables)
        supervisor = dataclasses.replace(sup_base, plugins=tuple(specs))
    except _Bad as exc:
        raise ConfigError(f"{label}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return DaemonConfig(supervisor, daemon, disc, source, defaults, found, tables)


def _command(name: str, table: Mapping[str, Any], where: str, base: str | None,
             by_name: Mapping[str, Any]) -> tuple[str, ...]:
    has_command, has_path = "command" in table, "path" in table
    if has_command and has_path:
        raise _Bad(where, "give either command or path, not both")
    if has_command:
        if "args" in table:
            raise _Bad(f"{where}.args", "only used with path (put arguments in command)")
        command = _convert(table["command"], tuple[str, ...], f"{where}.command")
        if not command:
            raise _Bad(f"{where}.command", "must not be empty")
        return typing.cast(tuple[str, ...], command)
    args = _convert(table.get("args", []), tuple[str, ...], f"{where}.args")
    if has_path:
        exe = _convert(table["path"], str, f"{where}.path")
        return (_relative(base, exe), *args)
    if name in by_name:
        return (by_name[name].path, *args)
    raise _Bad(where, f"no command or path given, and discovery found no executable "
                      f"named pipevisor-{name}")


def load(source: str | None, *, path_env: str | None = None) -> DaemonConfig:
    """Read and check ``source`` (None: the built-in default, discovery only)."""
    if source is None:
        return parse({}, path_env=path_env)
    try:
        with open(source, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse(data, source=source, path_env=path_env)


def socket_path(cli: str | None, config: DaemonConfig) -> str:
    """``--socket``, else ``$PIPEVISOR_SOCKET``, else the file's, else the default."""
    return (cli or os.environ.get("PIPEVISOR_SOCKET") or config.daemon.socket
            or paths.default_socket_path())
