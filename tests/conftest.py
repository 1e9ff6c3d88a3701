"""Shared fixtures: the anyio backend, and a guard that no test leaves a process behind."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test whose child processes outlive it (after a short grace for reaping)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = [p for p in me.children(recursive=True)
                if p.pid not in before and _alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"test left processes behind: {[(p.pid, _cmd(p)) for p in left]}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return "?"
