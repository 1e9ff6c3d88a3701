"""A plugin's bring-up: the handshake, a foreign server's ``initialize`` and the start
sequence, each as a step that talks over a :class:`Link` and returns what happened.

The steps decide; the runner acts (state changes, events, raw mode, the health loop).
A step never touches the runner, so tests/supervisor/test_bringup.py drives every
branch with a scripted link in milliseconds, next to the real-process suites
(test_host_conformance.py checks the same table end to end). What an error answer to
the handshake means (SPEC 6.5) is the pure :func:`judge_handshake_error`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pipevisor.protocol import (
    HANDSHAKE,
    ErrorCode,
    HandshakeError,
    HandshakeParams,
    HandshakeResult,
    VersionError,
    VersionRange,
)
from pipevisor.supervisor.engine import presets
from pipevisor.supervisor.engine.config import PluginMode, PluginSpec
from pipevisor.supervisor.engine.ending import End, EndKind
from pipevisor.supervisor.errors import CallError, CallTimeout, PluginCrashed, PluginError

__all__ = [
    "CRASHED",
    "Crashed",
    "GoRaw",
    "HandshakeVerdict",
    "Handshaken",
    "Initialized",
    "Link",
    "handshake",
    "initialize_server",
    "judge_handshake_error",
    "range_text",
    "start_sequence",
]


class Link(Protocol):
    """What bring-up needs of a connection (engine/connection.py's ``Connection``)."""

    async def call(self, method: str, params: Any = None,
                   timeout: float | None = None) -> Any: ...

    async def notify(self, method: str, params: Any = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Crashed:
    """The process died during the step: the exit watcher reports it, nothing to add."""


CRASHED = Crashed()


@dataclass(frozen=True, slots=True)
class Handshaken:
    result: HandshakeResult


@dataclass(frozen=True, slots=True)
class GoRaw:
    """Serve it as a plain JSON-RPC server, for this reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class Initialized:
    """A preset's ``initialize`` succeeded; what status shows of the server."""

    info: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class HandshakeVerdict:
    action: Literal["raw", "give_up", "failed_start"]
    """raw: run the process as a plain JSON-RPC server; give_up: failed, not restarted
    (a restart cannot help); failed_start: the restart policy decides."""
    reason: str


def range_text(value: Any) -> str:
    """A version range from an error's data, for messages; tolerant of junk."""
    try:
        return str(VersionRange.parse(value))
    except VersionError:
        return f"did not say ({value!r})"


def judge_handshake_error(code: int, message: str, data: Any, mode: PluginMode,
                          offered: VersionRange) -> HandshakeVerdict:
    """SPEC 6.5 [M-6.5b]: only "method not found" can mean a process that does not know
    the handshake (raw mode, when the configuration allows it); -31050 is a plugin that
    cannot talk to this host; any other error is a pipevisor plugin that could not
    start, which the restart policy handles."""
    if code == ErrorCode.METHOD_NOT_FOUND:
        if mode is PluginMode.AUTO:
            return HandshakeVerdict(
                "raw", f"it does not know pipevisor/handshake ({code} {message})")
        return HandshakeVerdict(
            "give_up", f"it does not speak the pipevisor protocol (handshake answered "
                       f'{code} {message}) and mode = "pipevisor" requires it; not restarted')
    if code == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION:
        theirs = data.get("supported") if isinstance(data, dict) else None
        return HandshakeVerdict(
            "give_up", f"handshake refused: no common protocol version: the host speaks "
                       f"{offered}, the plugin {range_text(theirs)} ({message})")
    hint = ""
    if code == ErrorCode.INVALID_PARAMS and mode is PluginMode.AUTO:
        # what MCP SDK servers answer to any unknown request before initialize
        hint = ('; if it is an MCP server, configure preset = "mcp" (a language server: '
                'preset = "lsp"; docs/foreign-servers.md)')
    return HandshakeVerdict("failed_start", f"the plugin could not start: it answered "
                                            f"the handshake with error {code} ({message})"
                                            f"{hint}")


async def handshake(link: Link, spec: PluginSpec, params: HandshakeParams,
                    first_stdout: Callable[[], bytes | None]
                    ) -> Handshaken | GoRaw | End | Crashed:
    """Send ``pipevisor/handshake`` and judge the answer (SPEC 6).

    ``first_stdout`` gives the start of the instance's first non-JSON-RPC output, if any:
    a process that wrote something that is not JSON-RPC and never answered is not a
    plugin at all, and restarting it cannot help.
    """
    timeout = spec.health.handshake_timeout
    try:
        raw = await link.call(HANDSHAKE, params.to_json(), timeout)
        return Handshaken(HandshakeResult.from_json(raw, params.protocol_versions))
    except PluginCrashed:
        return CRASHED
    except CallTimeout:
        junk = first_stdout()
        if junk is not None:
            return End(EndKind.HANDSHAKE, "the plugin wrote no JSON-RPC at all within "
                       f"{timeout:g} s; its output starts {junk!r}; not restarted",
                       give_up=True)
        hint = ("" if spec.mode is not PluginMode.AUTO else
                " (a plain JSON-RPC server that ignores unknown methods needs "
                "mode = \"raw\")")
        return End(EndKind.HANDSHAKE, f"no answer to the handshake within {timeout:g} s{hint}")
    except PluginError as exc:
        verdict = judge_handshake_error(exc.code, exc.error.message, exc.data,
                                        spec.mode, params.protocol_versions)
        if verdict.action == "raw":
            return GoRaw(verdict.reason)
        return End(EndKind.HANDSHAKE, verdict.reason, give_up=verdict.action == "give_up",
                   error=exc.error)
    except CallError as exc:
        give_up = exc.code in (ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
                               ErrorCode.METHOD_NOT_FOUND)
        return End(EndKind.HANDSHAKE, f"handshake refused: {exc.error.message}",
                   give_up=give_up, error=exc.error)
    except HandshakeError as exc:
        if spec.mode is PluginMode.AUTO and not (isinstance(raw, dict)
                                                 and "protocolVersion" in raw):
            # a server that answers any method (an echo tool, say) does not speak pipevisor
            return GoRaw("its answer to the handshake is not a pipevisor handshake result "
                         f"({exc.error.message})")
        return End(EndKind.HANDSHAKE, f"invalid handshake answer: {exc.error.message}",
                   give_up=True, error=exc.error)


async def initialize_server(link: Link, spec: PluginSpec, host_name: str, host_version: str
                            ) -> Initialized | End | Crashed:
    """A foreign server's own bring-up, by its preset (``initialize`` for LSP and MCP)."""
    timeout = spec.health.handshake_timeout
    preset = spec.preset.value

    async def call(method: str, params: Any) -> Any:
        return await link.call(method, params, timeout)

    try:
        return Initialized(await presets.initialize(spec, call, link.notify, host_name,
                                                    host_version))
    except PluginCrashed:
        return CRASHED
    except CallTimeout:
        return End(EndKind.START, f"no answer to {preset} initialize within {timeout:g} s")
    except CallError as exc:
        return End(EndKind.START, f"{preset} initialize refused: {exc.code} "
                   f"{exc.error.message}", error=exc.error)
    except presets.InitializeFailed as exc:
        return End(EndKind.START, f"{preset} initialize: {exc}", give_up=exc.give_up)


async def start_sequence(link: Link, spec: PluginSpec) -> End | Crashed | None:
    """The configured start sequence, in order; None when every step went through."""
    for number, step in enumerate(spec.start_sequence, 1):
        try:
            if step.notify:
                await link.notify(step.method, step.params)
            else:
                await link.call(step.method, step.params, spec.health.handshake_timeout)
        except PluginCrashed:
            return CRASHED
        except CallError as exc:
            return End(EndKind.START, f"start sequence step {number} ({step.method}) "
                       f"failed: {exc.error.message}", error=exc.error)
    return None
