"""A plugin built with pipevisor.kit exercising every path the tests check."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Any

from pipevisor.kit import Context, Plugin, PluginError

plugin = Plugin("kit-test", version="2.3.4", threads=2)
plugin.uses_host_method("host.q", "1.0")
release = threading.Event()  # set by the "release" method: lets a blocked sync call finish


@plugin.method("echo", version="1.2")
def echo(text: str) -> dict[str, str]:
    return {"text": text}


@plugin.method("add")
def add(a: float, b: float = 0) -> float:
    return a + b


@plugin.method("kwonly")
def kwonly(*, flag: bool) -> bool:
    return flag


@plugin.method("sleep")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@plugin.method("spin")
def spin(ctx: Context, seconds: float) -> str:
    """Sync work that polls its cancel flag."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.check_cancelled()
        release.wait(0.01)
    return "spun"


@plugin.method("block")
def block() -> str:
    """Sync work that ignores cancellation until released."""
    release.wait(30)
    return "released"


@plugin.method("release")
async def release_blocked() -> None:
    release.set()


@plugin.method("fail")
def fail() -> None:
    raise PluginError(4001, "deliberate", {"why": "test"})


@plugin.method("boom")
async def boom() -> None:
    raise KeyError("missing-thing")


@plugin.method("unjson")
def unjson() -> Any:
    return {1, 2}


@plugin.method("chatty")
def chatty() -> str:
    print("this must not reach stdout")
    logging.getLogger("kit.test").warning("careful: %s", 42)
    return "ok"


@plugin.method("steps")
async def steps(ctx: Context, n: int) -> int:
    for i in range(1, n + 1):
        ctx.progress(i, total=n, message=f"step {i}")
    return n


@plugin.method("paced_steps")
async def paced_steps(ctx: Context, n: int, pause: float = 0.0, pad: int = 0) -> int:
    """Progress 1..n of n, ``pause`` seconds apart, each message padded to ``pad``
    characters (a flood with n large, pause 0 and a large pad)."""
    for i in range(1, n + 1):
        ctx.progress(i, total=n, message=f"step {i}".ljust(pad, "."))
        if pause:
            await asyncio.sleep(pause)
    return n


@plugin.method("ask_host")
async def ask_host(ctx: Context, method: str, timeout: float = 5) -> Any:
    return await ctx.call_host(method, {"q": "?"}, timeout=timeout)


@plugin.method("ask_host_sync")
def ask_host_sync(ctx: Context, method: str) -> Any:
    return ctx.call_host_blocking(method, {"q": "?"}, timeout=5)


@plugin.method("typed", params_schema={"type": "object", "required": ["n"],
                                       "properties": {"n": {"type": "integer"}}},
               result_schema={"type": "string"})
def typed(n: int) -> Any:
    return "ok" if n >= 0 else n


@plugin.method("internals")
def internals() -> dict[str, Any]:
    """What the tests cannot see from outside: which handshake path ran, the line limit."""
    return {"fast": plugin.fast_handshake, "maxLineBytes": plugin.max_line_bytes,
            "asyncio": "asyncio" in sys.modules,
            "protocolVersion": str(plugin.protocol_version)}


@plugin.method("blast")
def blast(ctx: Context, size: int, notes: int) -> str:
    """Progress and log lines, then a large result: lines other threads must not cut into."""
    for i in range(1, notes + 1):
        ctx.progress(i, total=notes, message="p" * 1000)
        logging.getLogger("kit.blast").warning("%s", "l" * 1000)
    return "r" * size


@plugin.method("ablast")
async def ablast(ctx: Context, size: int, notes: int) -> str:
    for i in range(1, notes + 1):
        ctx.progress(i, total=notes, message="q" * 1000)
        await asyncio.sleep(0)
    return "a" * size


received_notes: list[Any] = []  # what the notification handlers received, in order


@plugin.notification("note.add", params_schema={
    "type": "object", "required": ["value"], "properties": {"value": {"type": "integer"}}})
def note_add(value: int) -> None:
    received_notes.append(value)


@plugin.notification("note.async")
async def note_async(value: Any, where: str = "async") -> None:
    await asyncio.sleep(0)
    received_notes.append([where, value])


@plugin.notification("note.boom")
def note_boom() -> None:
    raise RuntimeError("a notification handler failed")


@plugin.method("notes")
def get_notes() -> list[Any]:
    return received_notes


if __name__ == "__main__":
    plugin.run()
