"""Drive a plugin over its real stdin/stdout, line by line, with deadlines."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

KIT_PLUGIN = str(Path(__file__).resolve().parent / "kit_plugin.py")
DEADLINE = 10.0
HANDSHAKE: dict[str, Any] = {
    "jsonrpc": "2.0", "id": 0, "method": "pipevisor/handshake",
    "params": {"protocol": "pipevisor", "protocolVersions": {"min": "1.0", "max": "1.0"},
               "host": {"name": "test", "version": "0"}, "plugin": {"name": "kit", "instance": 1},
               "hostMethods": {"host.q": ["1.0"]},
               "capabilities": {"cancel": True, "log": {"minLevel": "info"}}},
}


class Pipes:
    """A started plugin process; ``lines`` keeps every stdout message read so far."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None and process.stdin is not None
        self._out = BufferedByteReceiveStream(process.stdout)
        self.lines: list[dict[str, Any]] = []
        self.handshake: dict[str, Any] = {}

    async def send(self, **message: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def read(self) -> dict[str, Any]:
        with anyio.fail_after(DEADLINE):
            line = await self._out.receive_until(b"\n", 1 << 20)
        msg: dict[str, Any] = json.loads(line)
        self.lines.append(msg)
        return msg

    async def answer_to(self, ident: Any) -> dict[str, Any]:
        """The response with ``ident``: one read earlier, or the next one to come.

        Messages read on the way are kept in ``lines``, so answers that arrive
        in another order than asked for are not lost.
        """
        for msg in self.lines:
            if msg.get("id") == ident and "method" not in msg:
                return msg
        while True:
            msg = await self.read()
            if msg.get("id") == ident and "method" not in msg:
                return msg

    async def request(self, ident: Any, method: str, params: Any = None) -> dict[str, Any]:
        await self.send(id=ident, method=method, **({} if params is None else {"params": params}))
        return await self.answer_to(ident)

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    async def wait(self) -> int:
        with anyio.fail_after(DEADLINE):
            return await self.process.wait()


@asynccontextmanager
async def running(path: str = KIT_PLUGIN, handshake: bool = True,
                  **popen: Any) -> AsyncIterator[Pipes]:
    """The plugin, handshaken; killed on the way out if the test did not end it.
    ``popen`` goes to anyio.open_process (``cwd=...``, say)."""
    process = await anyio.open_process([sys.executable, path], **popen)
    try:
        pipes = Pipes(process)
        if handshake:
            await pipes.send(**{k: v for k, v in HANDSHAKE.items() if k != "jsonrpc"})
            pipes.handshake = await pipes.answer_to(0)
        yield pipes
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.move_on_after(DEADLINE, shield=True):
            await process.wait()
