"""The records pipevisor hands out about a plugin, typed: what ``Supervisor.status()``
returns, what the control socket's ``status`` answers (the same, as JSON) and what the
CLI renders. Kept in the base layer with no imports of the engine, so the CLI and the
clients can name these types without loading it (tests/test_layering.py)."""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["LastExit", "PluginStatus"]


class LastExit(TypedDict):
    """How the last instance ended."""

    returncode: int | None
    """Exit status; negative: killed by that signal; None: still running when ended."""
    description: str
    """"exited with code 3", "killed by SIGKILL", ..."""
    time: float
    stderr: list[str]
    """The last stderr lines of that instance."""


class _PluginStatus(TypedDict):
    """The keys every status record has (see :class:`PluginStatus`)."""

    name: str
    state: str
    """A PluginState value: stopped, starting, handshaking, ready, degraded, backoff,
    stopping, failed."""
    reason: str | None
    """Why it is in that state (failed, backoff, degraded, stopped), when known."""
    pid: int | None
    """The plugin's own pid, as this host sees it."""
    shim_pid: int | None
    """The containment shim's pid above it (None without a shim)."""
    instance: int
    """Starts so far (1 for the first instance)."""
    uptime: float | None
    """Seconds serving, for a serving plugin."""
    restarts: int
    """Restarts the restart policy made (after exits, hangs, limits)."""
    requested_restarts: int
    """Restarts asked for (``pipevisor restart``, ``Supervisor.restart``), counted apart."""
    last_exit: LastExit | None
    faults: int
    """Protocol faults counted (stray output, invalid messages)."""
    command: list[str]
    protocol_version: str | None
    plugin_version: str | None
    methods: dict[str, str | None]
    """Declared method -> its interface version."""
    mode: str | None
    """"pipevisor", "raw", or None before the handshake."""
    preset: str | None
    """"mcp", "lsp" for a foreign server run by a preset."""
    server: dict[str, Any] | None
    """What a foreign server said at initialize (version, info, capabilities)."""
    max_in_flight: int
    interfaces: dict[str, dict[str, Any]]
    degradations: list[dict[str, Any]]
    host_methods: dict[str, dict[str, Any]]
    invalid_results: int
    in_flight: int
    queued: int
    calls_ok: int
    """Calls answered with a result since the plugin was loaded."""
    call_errors: int
    """Calls that ended without a result (the plugin's error, timeout, crash, ...)."""
    stderr_tail: list[str]
    resources: dict[str, Any] | None
    """The sampler's last reading, for a plugin with limits."""
    breaches: list[dict[str, Any]]
    containment: dict[str, Any]
    """Mechanism, shim and the privileges in effect for this plugin."""


class PluginStatus(_PluginStatus, total=False):
    """One plugin, as ``status`` shows it (docs/cli.md and SPEC section 14). The keys
    below are there with ``status_with_usage`` (and the control socket) only: a
    class of its own with ``total=False``, because NotRequired is not seen at run
    time under postponed annotations."""

    memory_rss: int | None
    """The tree's resident bytes."""
    cpu_seconds: float | None
    cpu_percent: float | None
    """Since the previous ``status_with_usage``, summed over the tree (200: two cores)."""
    processes: int
