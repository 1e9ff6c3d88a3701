"""What the supervisor runs and how: per-plugin specs with their policies.

These are plain frozen dataclasses so embedding code builds them directly;
the daemon's TOML loader produces the same objects. Defaults are production
defaults, documented in docs/configuration.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipevisor.protocol import DEFAULT_MAX_LINE_BYTES
from pipevisor.protocol.interfaces import InterfaceSet
from pipevisor.supervisor.engine.interfaces import AdapterSpec
from pipevisor.supervisor.engine.limits import Limits
from pipevisor.supervisor.engine.policy import RestartPolicy
from pipevisor.supervisor.errors import ConfigError
from pipevisor.supervisor.proc.privileges import Sandbox
from pipevisor.supervisor.proc.spawn import DEFAULT_INHERITED_ENV


def package_version() -> str:
    """The installed pipevisor's version, read from its metadata (one source:
    pyproject.toml); "0+unknown" when run from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pipevisor")
    except PackageNotFoundError:
        return "0+unknown"

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")



class ProtocolErrorAction(StrEnum):
    LOG = "log"
    """Log and count garbage on stdout, oversized lines, unexpected responses."""
    RESTART = "restart"
    """Treat the first such fault as a failure: the plugin is restarted."""


@dataclass(frozen=True, slots=True)
class StopPolicy:
    """Grace periods of the stop sequence: shutdown request -> close stdin -> SIGTERM -> SIGKILL."""

    shutdown_grace: float = 2.0
    eof_grace: float = 2.0
    term_grace: float = 2.0


@dataclass(frozen=True, slots=True)
class CallPolicy:
    timeout: float = 30.0
    """Default per-call deadline in seconds (a call may pass its own)."""
    max_in_flight: int = 256
    """Requests sent to the plugin and not yet answered (lowered to the plugin's maxConcurrency)."""
    max_queued: int = 4096
    """Callers allowed to wait for an in-flight slot; beyond that a call fails with QueueFull."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    handshake_timeout: float = 10.0
    ping_interval: float = 10.0
    """Seconds between liveness pings to a ready plugin; 0 disables them."""
    ping_timeout: float = 5.0
    cancel_grace: float = 5.0
    """After a cancel, how long the plugin may take to acknowledge before it is logged as slow."""


class PluginMode(StrEnum):
    AUTO = "auto"
    """Handshake; a plugin that answers it with a plain JSON-RPC error runs in raw mode."""
    PIPEVISOR = "pipevisor"
    """Handshake required; a refusal is a failure."""
    RAW = "raw"
    """No handshake, no pings: a plain JSON-RPC 2.0 server, calls passed through unvalidated."""


@dataclass(frozen=True, slots=True)
class StartStep:
    """One message sent after every start and restart, before the plugin counts as ready
    (an MCP server's ``initialize`` then ``notifications/initialized``, say)."""

    method: str
    params: Any = None
    notify: bool = False
    """A notification (no answer awaited) instead of a request that must succeed."""


class Preset(StrEnum):
    """What a foreign JSON-RPC server is, so pipevisor drives it the way it expects
    (engine/presets.py, docs/foreign-servers.md). Any preset implies raw mode."""

    NONE = "none"
    """A plain JSON-RPC 2.0 server: only what ``server`` configures."""
    MCP = "mcp"
    """A Model Context Protocol server over stdio."""
    LSP = "lsp"
    """A language server: Content-Length framing, LSP's lifecycle."""


class Framing(StrEnum):
    LINES = "lines"
    """Newline-delimited JSON (pipevisor, MCP)."""
    CONTENT_LENGTH = "content-length"
    """``Content-Length:`` headers before each message (LSP)."""


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    """How to drive a foreign JSON-RPC server in raw mode. Every key left unset takes
    the preset's value (docs/foreign-servers.md has the table); a server without a
    preset gets only what is set here."""

    framing: Framing | None = None
    cancel_method: str | None = None
    """Notification sent when a call is abandoned (timeout, caller cancelled)."""
    cancel_params: Mapping[str, Any] | None = None
    """Its params: a template where the string ``"$id"`` stands for the abandoned
    request's id and ``"$reason"`` for why (``{requestId = "$id", reason = "$reason"}``)."""
    ping_method: str | None = None
    """A request any live server answers at once; sent every ``health.ping_interval``,
    a miss of ``health.ping_timeout`` restarts the server. Unset: no pings."""
    stop_sequence: tuple[StartStep, ...] | None = None
    """Messages sent first when the server is stopped gracefully (within
    ``stop.shutdown_grace``), before stdin is closed."""
    max_in_flight: int | None = None
    """Requests sent at once (also bounded by ``calls.max_in_flight``); unset: the
    preset's safe default (MCP: 1)."""
    answers: Mapping[str, Any] = field(default_factory=dict)
    """Static results for the server's requests to the host, by method
    (``answers."roots/list" = { roots = [] }``); a host method of the same name wins."""
    capabilities: Mapping[str, Any] | None = None
    """The client capabilities sent in ``initialize`` (MCP, LSP); unset: the preset's."""
    initialize: Mapping[str, Any] = field(default_factory=dict)
    """More ``initialize`` params, merged over the preset's (LSP: ``rootUri``, ...)."""
    protocol_versions: tuple[str, ...] = ()
    """MCP: versions offered, newest first; empty: every version pipevisor supports."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", dict(self.answers))
        object.__setattr__(self, "initialize", dict(self.initialize))
        object.__setattr__(self, "protocol_versions", tuple(self.protocol_versions))
        if self.stop_sequence is not None:
            object.__setattr__(self, "stop_sequence", tuple(self.stop_sequence))
        if self.framing is not None:
            object.__setattr__(self, "framing", Framing(self.framing))
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError("server.max_in_flight must be >= 1")
        if self.cancel_params is not None and self.cancel_method is None:
            raise ConfigError("server.cancel_params needs server.cancel_method")


def _frozen_env(env: Mapping[str, str] | None = None) -> MappingProxyType[str, str]:
    return MappingProxyType(dict(env or {}))


@dataclass(frozen=True, slots=True)
class PluginSpec:
    name: str
    command: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=_frozen_env)
    inherit_env: tuple[str, ...] = DEFAULT_INHERITED_ENV
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    stop: StopPolicy = field(default_factory=StopPolicy)
    calls: CallPolicy = field(default_factory=CallPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    on_protocol_error: ProtocolErrorAction = ProtocolErrorAction.LOG
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    stderr_lines: int = 1000
    """Lines of the plugin's stderr kept in memory for status and crash reports."""
    stderr_tail_bytes: int = 1 << 20
    """... and at most this many bytes of them (docs/bounds.md)."""
    log_lines_per_second: float = 200.0
    """stderr lines and ``pipevisor/log`` messages forwarded to the host's log per
    second (burst: one second's worth); the rest is counted and reported."""
    log_bytes_per_second: int = 128 * 1024
    """... and at most this many bytes of them per second."""
    autostart: bool = True
    mode: PluginMode = PluginMode.AUTO
    preset: Preset = Preset.NONE
    """A foreign server's kind (``"mcp"``, ``"lsp"``): implies ``mode = "raw"``."""
    server: ServerPolicy = field(default_factory=ServerPolicy)
    """How a raw-mode server is cancelled, pinged, stopped, answered (engine/presets.py)."""
    start_sequence: tuple[StartStep, ...] = ()
    validate_params: bool = True
    """Check callers' params against the interface before they reach the plugin."""
    validate_results: bool = True
    """Check the plugin's results against the interface before they reach the caller."""
    limits: Limits = field(default_factory=Limits)
    """CPU/memory/fd/process limits; none by default (docs/limits.md)."""
    user: str | int | None = None
    """Run the plugin as this user (name or uid; needs a root supervisor): set in the
    plugin before exec, with its supplementary groups cleared. None: ours."""
    group: str | int | None = None
    """... and this group (name or gid); default: the user's primary group."""
    no_new_privs: bool = True
    """PR_SET_NO_NEW_PRIVS before exec: no setuid binary or file capability can give
    the plugin (or anything it runs) more privileges than it started with."""
    sandbox: Sandbox | None = None
    """A Landlock sandbox (paths to read/write, TCP ports); none by default
    (docs/process-containment.md, "Privileges")."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", PluginMode(self.mode))
        except ValueError:
            raise ConfigError(f"plugin {self.name!r}: mode must be one of "
                              f"{[m.value for m in PluginMode]}, not {self.mode!r}") from None
        object.__setattr__(self, "start_sequence", tuple(self.start_sequence))
        try:
            object.__setattr__(self, "preset", Preset(self.preset))
        except ValueError:
            raise ConfigError(f"plugin {self.name!r}: preset must be one of "
                              f"{[p.value for p in Preset]}, not {self.preset!r}") from None
        if self.preset is not Preset.NONE:
            if self.mode is PluginMode.PIPEVISOR:
                raise ConfigError(f"plugin {self.name!r}: preset {self.preset.value!r} is a "
                                  "foreign server, it cannot have mode = \"pipevisor\"")
            object.__setattr__(self, "mode", PluginMode.RAW)
        if not NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"plugin name {self.name!r} is invalid: use 1-64 letters, digits, '_', '.', '-',"
                " starting with a letter or digit"
            )
        if isinstance(self.command, str) or not self.command:
            raise ConfigError(
                f"plugin {self.name!r}: command must be a non-empty list of strings "
                "(no shell is used)"
            )
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", _frozen_env(self.env))
        if self.max_line_bytes < 1024:
            raise ConfigError(f"plugin {self.name!r}: max_line_bytes must be at least 1024")
        if self.calls.max_in_flight < 1 or self.calls.max_queued < 0:
            raise ConfigError(f"plugin {self.name!r}: max_in_flight must be >= 1, max_queued >= 0")
        if self.stderr_lines < 0 or self.stderr_tail_bytes < 1:
            raise ConfigError(f"plugin {self.name!r}: stderr_lines must be >= 0 and "
                              "stderr_tail_bytes >= 1")
        if not (self.log_lines_per_second >= 1 and self.log_bytes_per_second >= 1024):
            raise ConfigError(f"plugin {self.name!r}: log_lines_per_second must be >= 1 and "
                              "log_bytes_per_second >= 1024")
        if self.calls.timeout <= 0:
            raise ConfigError(f"plugin {self.name!r}: call timeout must be positive")
        for key in ("user", "group"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not (
                    (isinstance(value, int) and value >= 0)
                    or (isinstance(value, str) and value))):
                raise ConfigError(f"plugin {self.name!r}: {key} must be a name or a number "
                                  f">= 0, not {value!r}")
        if self.sandbox is not None and not self.no_new_privs:
            raise ConfigError(f"plugin {self.name!r}: a sandbox needs no_new_privs "
                              "(Landlock requires it)")


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    plugins: Sequence[PluginSpec] = ()
    host_name: str = "pipevisor"
    host_version: str = field(default_factory=package_version)
    """Defaults to the installed distribution's version (pyproject.toml is the one source)."""
    containment: str = "auto"
    """'auto' (best available), 'pidns' or 'session'; see docs/process-containment.md."""
    state_dir: str | None = None
    """Where leftover process records live; None disables leftover cleanup."""
    interfaces: str | Path | InterfaceSet | Mapping[str, Any] | None = None
    """The interfaces folder (docs/interfaces.md), parsed documents, or a built set."""
    adapters: Sequence[AdapterSpec] = ()
    """Adapters loaded from "module:attribute" strings at start."""
    sample_interval: float = 1.0
    """Seconds between resource samples of plugins with limits; 0 turns sampling off."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapters", tuple(self.adapters))
        if self.sample_interval < 0:
            raise ConfigError(f"sample_interval must be >= 0 (0 turns sampling off), "
                              f"not {self.sample_interval!r}")
        seen: set[str] = set()
        for spec in self.plugins:
            if spec.name in seen:
                raise ConfigError(f"plugin name {spec.name!r} is used twice")
            seen.add(spec.name)
        object.__setattr__(self, "plugins", tuple(self.plugins))
