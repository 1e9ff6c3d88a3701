"""Shared fixtures: the anyio backend, a guard that no test leaves a process behind, the
language examples built once per session, and the no-shim mode.

``--no-shim`` runs the tests as on a host without the pvinit shim (no C compiler, macOS,
...): it sets ``PIPEVISOR_SHIM=0`` for the whole session, inherited by every process the
tests start, so containment falls back to ``session`` (docs/process-containment.md).
Setting ``PIPEVISOR_SHIM=0`` by hand does the same. In that mode a test that needs pvinit
by nature (a pid namespace, a parent-death signal) is skipped with the reason: mark it
``@pytest.mark.needs_shim("why")``, or list it in ``_NEEDS_SHIM`` below when the module is
not yours to mark. scripts/test runs the engine's tests (tests/supervisor) a second time
this way.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pipevisor.supervisor.proc import containment as _platform
from tests.examples.toolchains import BUILD, EXAMPLES, Example, missing_toolchain, unavailable

_NEEDS_SHIM = {
    "tests/supervisor/test_lifecycle.py::test_nothing_survives_a_sigkilled_supervisor":
        "only pvinit (parent-death signal, pid namespace) takes a SIGKILLed supervisor's "
        "plugin trees with it",
}
"""Tests that need the shim by nature, by node id (without parameters) -> why."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-shim", action="store_true", default=False,
        help="run without the pvinit shim (PIPEVISOR_SHIM=0 for the session and every "
             "process it starts): the 'session' containment fallback; tests that need "
             "pvinit are skipped")


def no_shim_mode() -> bool:
    """Whether this session runs without the shim (--no-shim or PIPEVISOR_SHIM=0)."""
    return os.environ.get("PIPEVISOR_SHIM") == "0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_shim(reason): needs the pvinit shim by nature (pid namespace, "
                   "parent-death signal); skipped under --no-shim / PIPEVISOR_SHIM=0")
    if config.getoption("--no-shim"):
        os.environ["PIPEVISOR_SHIM"] = "0"
        _platform.reset_detection_cache()


def pytest_report_header(config: pytest.Config) -> str | None:
    if no_shim_mode():
        return "pvinit shim: disabled (PIPEVISOR_SHIM=0), containment falls back to 'session'"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not no_shim_mode():
        return
    for item in items:
        marker = item.get_closest_marker("needs_shim")
        reason = _NEEDS_SHIM.get(item.nodeid.split("[", 1)[0])
        if marker is not None:
            reason = str(marker.args[0]) if marker.args else "needs the pvinit shim"
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"no-shim run: {reason}"))


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
