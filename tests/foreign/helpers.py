"""Waiting on what a test server recorded, with deadlines (no blind sleeps)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio


def read_record(path: Path) -> list[dict[str, Any]]:
    """Every message the server received, in order (complete lines only)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written
    return out


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    with anyio.move_on_after(timeout):
        while not check():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"waited {timeout} s for {what}")


async def wait_recorded(path: Path, method: str, timeout: float) -> dict[str, Any]:
    """The first message named ``method`` the server received, waiting for it."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [m for m in read_record(path) if m.get("method") == method]
        return bool(found)

    await wait_for(seen, timeout, f"{method} to reach the server")
    return found[0]


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """``pid`` SIGSTOPped for the block, and SIGCONTed after it even when the block
    fails (a stopped process would outlive the test); it may have died meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
