"""Bring-up decisions as pure functions (engine/bringup.py): what an error answer to
the handshake means, tested without processes; tests/supervisor/test_host_conformance.py
checks the same table end to end with real plugins."""

from __future__ import annotations

import pytest

from pipevisor.protocol import PROTOCOL_VERSIONS, ErrorCode
from pipevisor.supervisor.engine.bringup import judge_handshake_error, range_text
from pipevisor.supervisor.engine.config import PluginMode


@pytest.mark.parametrize(("code", "mode", "action"), [
    (ErrorCode.METHOD_NOT_FOUND, PluginMode.AUTO, "raw"),
    (ErrorCode.METHOD_NOT_FOUND, PluginMode.PIPEVISOR, "give_up"),
    (ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, PluginMode.AUTO, "give_up"),
    (ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, PluginMode.PIPEVISOR, "give_up"),
    (ErrorCode.INTERNAL_ERROR, PluginMode.AUTO, "failed_start"),
    (ErrorCode.INVALID_PARAMS, PluginMode.AUTO, "failed_start"),
    (ErrorCode.INVALID_PARAMS, PluginMode.PIPEVISOR, "failed_start"),
    (1, PluginMode.AUTO, "failed_start"),
    (ErrorCode.NOT_INITIALIZED, PluginMode.AUTO, "failed_start"),
])
def test_what_a_handshake_error_means(code: int, mode: PluginMode, action: str) -> None:
    """[M-6.5b]: only -32601 can be raw mode, only where the config allows it."""
    verdict = judge_handshake_error(code, "nope", None, mode, PROTOCOL_VERSIONS)
    assert verdict.action == action
    assert str(code) in verdict.reason or "no common protocol version" in verdict.reason


def test_the_reasons_say_what_to_do() -> None:
    sdk = judge_handshake_error(ErrorCode.INVALID_PARAMS, "Invalid request parameters",
                                None, PluginMode.AUTO, PROTOCOL_VERSIONS)
    assert 'preset = "mcp"' in sdk.reason  # an MCP SDK server without its preset
    version = judge_handshake_error(ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, "no",
                                    {"supported": {"min": "2.0", "max": "2.3"}},
                                    PluginMode.AUTO, PROTOCOL_VERSIONS)
    assert "the plugin 2.0..2.3" in version.reason and str(PROTOCOL_VERSIONS) in version.reason
    assert "did not say" in range_text(["junk"])
