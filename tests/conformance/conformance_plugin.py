"""A pipevisor.kit plugin for the conformance suite: the methods the JSON-RPC 2.0
specification's examples call, plus what the plugin-side MUSTs of SPEC.md need."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from pipevisor.kit import Context, Plugin

plugin = Plugin("conformance", version="1.0.0", threads=4)
release = threading.Event()
heard: list[list[Any]] = []  # notifications the handlers got: [method, params...]


# ------------------------------------------- the JSON-RPC 2.0 examples' methods

@plugin.method("subtract")
def subtract(minuend: float, subtrahend: float) -> float:
    return minuend - subtrahend


@plugin.method("sum")
def sum_(*numbers: float) -> float:
    return sum(numbers)


@plugin.method("get_data")
def get_data() -> list[Any]:
    return ["hello", 5]


@plugin.notification("update")
def update(*values: Any) -> None:
    heard.append(["update", *values])


@plugin.notification("notify_hello")
def notify_hello(*values: Any) -> None:
    heard.append(["notify_hello", *values])


@plugin.notification("notify_sum")
def notify_sum(*values: Any) -> None:
    heard.append(["notify_sum", *values])


# ----------------------------------------------------------- SPEC's MUSTs

@plugin.method("heard")
def get_heard() -> list[list[Any]]:
    return heard


@plugin.method("text")
def text(text: str) -> str:
    return text


@plugin.method("size")
def size(text: str) -> int:
    return len(text.encode())


@plugin.method("big")
def big(n: int) -> str:
    return "b" * n


@plugin.method("surrogate")
def surrogate() -> str:
    return "\ud800"


@plugin.method("nan")
def nan() -> float:
    return float("nan")


@plugin.method("print")
def print_to_stdout() -> str:
    print("a stray print")
    os.write(1, b"a stray write to fd 1\n")
    return "printed"


@plugin.method("cwd")
def cwd() -> str:
    return os.getcwd()


@plugin.method("pid")
def pid() -> int:
    return os.getpid()


@plugin.method("sleep")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@plugin.method("block")
def block() -> str:
    release.wait(30)
    return "released"


@plugin.method("release")
async def release_blocked() -> None:
    """Async: it runs on the event loop even while every worker thread is blocked."""
    release.set()


@plugin.method("steps")
async def steps(ctx: Context, n: int) -> int:
    for i in range(1, n + 1):
        ctx.progress(i, total=n)
        await asyncio.sleep(0)
    return n


@plugin.method("ask_host")
async def ask_host(ctx: Context, method: str, times: int = 1) -> Any:
    return await asyncio.gather(*(ctx.call_host(method, {"n": i}, timeout=10)
                                  for i in range(times)))


if __name__ == "__main__":
    plugin.run()
