"""Helpers of the conformance suite: the conformance plugin over real pipes, and checks
every line a plugin writes must pass (SPEC 3.1, 4.1, 5)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.plugin_kit.pipes import Pipes, running

PLUGIN = str(Path(__file__).resolve().parent / "conformance_plugin.py")
STANDARD = {-32700: "Parse error", -32600: "Invalid Request", -32601: "Method not found",
            -32602: "Invalid params", -32603: "Internal error"}
PLUGIN_SENDS = {"pipevisor/log", "pipevisor/progress", "pipevisor/cancel"}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_line(raw: bytes) -> Any:
    """[M-3.1a] [M-3.1b] [M-4.1a] [M-4.1b] [M-4.1c] [M-5b]: one line as the plugin wrote it."""
    assert raw.endswith(b"\n") and b"\n" not in raw[:-1] and b"\r" not in raw, raw[:200]
    value = json.loads(raw.decode("utf-8", "strict"), parse_constant=_no_constant)
    for msg in value if isinstance(value, list) else [value]:
        assert msg["jsonrpc"] == "2.0", msg
        if "method" in msg:
            assert msg["method"] in PLUGIN_SENDS or not msg["method"].startswith(
                ("pipevisor/", "rpc.", "$/")), msg
            assert isinstance(msg.get("params", {}), dict | list), msg
        if "error" in msg:
            error = msg["error"]
            assert type(error["code"]) is int and isinstance(error["message"], str), msg
            assert set(error) <= {"code", "message", "data"}
            assert "result" not in msg
    return value


class Checked(Pipes):
    """Pipes whose every line read goes through :func:`check_line`; batches kept whole."""

    async def read(self) -> Any:
        import anyio

        from tests.plugin_kit.pipes import DEADLINE

        with anyio.fail_after(DEADLINE):
            line = await self._out.receive_until(b"\n", 1 << 24)
        value = check_line(line + b"\n")
        self.lines.append(value)
        return value

    async def answer_to(self, ident: Any) -> dict[str, Any]:
        for msg in self.lines:
            if isinstance(msg, dict) and "id" in msg and msg["id"] == ident and (
                    "method" not in msg):
                return msg
        while True:
            msg = await self.read()
            if isinstance(msg, dict) and "id" in msg and msg["id"] == ident and (
                    "method" not in msg):
                return msg

    async def send_raw(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(data)


@asynccontextmanager
async def conformance(handshake: bool = True, **popen: Any) -> AsyncIterator[Checked]:
    async with running(PLUGIN, handshake=False, **popen) as pipes:
        checked = Checked(pipes.process)
        if handshake:
            from tests.plugin_kit.pipes import HANDSHAKE

            await checked.send(**{k: v for k, v in HANDSHAKE.items() if k != "jsonrpc"})
            checked.handshake = await checked.answer_to(0)
        yield checked
