"""A pipevisor.kit plugin with sync handlers only: it must never import asyncio."""

from __future__ import annotations

import sys
from typing import Any

from pipevisor.kit import Context, Plugin

plugin = Plugin("kit-sync", version="0.1.0", threads=2)


@plugin.method("echo")
def echo(text: str) -> dict[str, str]:
    """What startup_time.py calls: the first answer of a plugin that has no asyncio."""
    return {"text": text}


@plugin.method("loaded")
def loaded() -> list[str]:
    """The heavy modules in this process, as the handler sees it."""
    return sorted({"asyncio", "concurrent", "jsonschema"} & {m.split(".")[0] for m in sys.modules})


@plugin.method("ask")
def ask(ctx: Context, method: str, timeout: float = 5) -> Any:
    return ctx.call_host_blocking(method, {"q": "?"}, timeout=timeout)


if __name__ == "__main__":
    plugin.run()
