"""Decisions of a plugin's bring-up, as pure functions: what an error answer to the
handshake means (SPEC 6.5). The runner does the I/O and acts on the verdict; these are
tested without processes (tests/supervisor/test_bringup.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipevisor.protocol import ErrorCode, VersionError, VersionRange
from pipevisor.supervisor.engine.config import PluginMode

__all__ = ["HandshakeVerdict", "judge_handshake_error", "range_text"]


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
