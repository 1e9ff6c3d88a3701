"""Shared fixtures: the anyio backend, a guard that no test leaves a process behind, and
the language examples built once per session."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.examples.toolchains import BUILD, EXAMPLES, Example, missing_toolchain, unavailable


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


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Example], Path]:
    """An example's executable; go/c are compiled into a temporary folder (never in place),
    at most once per session for every test that asks. A missing toolchain skips with what
    to install, or fails under PIPEVISOR_REQUIRE_TOOLCHAINS=1 (CI).

    Defined here, not in tests/examples/, so the example tests and the checker tests share
    one session fixture: a fixture imported into a second module is a second fixture, and
    built everything twice."""
    built: dict[str, Path] = {}
    out = tmp_path_factory.mktemp("examples")

    def get(example: Example) -> Path:
        reason = missing_toolchain(example)
        if reason is not None:
            unavailable(f"{example.lang} example: {reason}")
        if not example.compiled:
            return EXAMPLES / example.executable
        if example.lang not in built:
            result = subprocess.run([str(BUILD), "--out", str(out), example.lang],
                                    capture_output=True, text=True, check=False, timeout=300)
            assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
            built[example.lang] = out / Path(example.executable).name
        return built[example.lang]

    return get
