"""Without the pvinit shim (issue 13, item 3): the 'session' fallback must work.

No C compiler, an unwritable cache dir, a shim binary that cannot run, PIPEVISOR_SHIM=0
or a non-Linux host all lead to the same fallback: the plugin is spawned directly in its
own session. It must start, answer calls and get the kernel rlimits asked for (set just
after the spawn, see docs/process-containment.md), and the supervisor must say once,
as a warning, which fallback runs and what is lost.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipevisor.supervisor import Supervisor, SupervisorConfig
from pipevisor.supervisor.engine.config import CallPolicy, HealthPolicy, PluginSpec, StopPolicy
from pipevisor.supervisor.engine.limits import Limit, Limits
from pipevisor.supervisor.engine.policy import RestartPolicy
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc.rlimits import RLIMIT_IDS
from pipevisor.supervisor.tools.checker import CheckOptions, check_plugin

PIPE_PLUGIN = str(Path(__file__).resolve().parent.parent / "plugins" / "pipe_plugin.py")
ECHO = Path(__file__).resolve().parents[2] / "examples" / "python-stdlib" / "pipevisor-echo"
MiB = 1 << 20

pytestmark = pytest.mark.skipif(not _platform.IS_LINUX,
                                reason="reads the plugin's rlimits through /proc")


def limited_spec(name: str = "limited") -> PluginSpec:
    return PluginSpec(
        name, (sys.executable, PIPE_PLUGIN),
        limits=Limits(memory=Limit(256 * MiB), fds=Limit(100)),
        restart=RestartPolicy(first_backoff=0.05, max_delay=0.5, max_restarts=5,
                              within_seconds=30),
        stop=StopPolicy(shutdown_grace=2.0, eof_grace=2.0, term_grace=2.0),
        calls=CallPolicy(timeout=10.0),
        health=HealthPolicy(handshake_timeout=10.0, ping_interval=0),
    )


def expected(value: int, which: int) -> int:
    """What an unprivileged lowering gives: never above the hard limit we already have."""
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


@pytest.fixture
def environ() -> Iterator[dict[str, str | None]]:
    """Set variables for one test; restored and detection forgotten afterwards, in that
    order (monkeypatch would restore after this fixture resets the cache)."""
    saved: dict[str, str | None] = {}

    class Env(dict[str, str | None]):
        def __setitem__(self, key: str, value: str | None) -> None:
            saved.setdefault(key, os.environ.get(key))
            _set_env(key, value)
            super().__setitem__(key, value)

    _platform.reset_detection_cache()
    try:
        yield Env()
    finally:
        for key, value in saved.items():
            _set_env(key, value)
        _platform.reset_detection_cache()


def _fallback(kind: str, environ: dict[str, str | None], tmp_path: Path) -> str:
    """Make the shim unavailable in one of the ways a real host can; returns the words the
    warning must give as the reason."""
    if kind == "disabled":
        environ["PIPEVISOR_SHIM"] = "0"
        return "PIPEVISOR_SHIM=0"
    environ["PIPEVISOR_SHIM"] = None
    if kind == "unusable":
        broken = tmp_path / "pvinit-broken"
        broken.write_text("this is not a program\n")
        broken.chmod(0o755)
        environ["PIPEVISOR_SHIM"] = str(broken)
        return "cannot run"
    if kind == "cache-unwritable":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        environ["PIPEVISOR_CACHE_DIR"] = str(blocker / "cache")
        return "cache dir"
    assert kind == "no-compiler"
    environ["PIPEVISOR_CACHE_DIR"] = str(tmp_path / "empty-cache")
    empty = tmp_path / "bin"
    empty.mkdir()
    environ["PATH"] = str(empty)
    return "no C compiler"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["disabled", "unusable", "cache-unwritable", "no-compiler"])
async def test_without_the_shim_a_limited_plugin_starts_with_its_rlimits(
        kind: str, environ: dict[str, str | None], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    reason = _fallback(kind, environ, tmp_path)
    spec = limited_spec()
    asked = spec.limits.rlimits()
    assert set(asked) == {"core", "nofile", "data"}
    ours = {name: resource.getrlimit(RLIMIT_IDS[name]) for name in asked}
    caplog.set_level(logging.WARNING)
    sup = Supervisor(SupervisorConfig(plugins=[spec]))
    async with sup:
        assert sup.containment is not None
        assert (sup.containment.mechanism, sup.containment.shim) == ("session", None)
        await sup.wait_ready(["limited"], timeout=20)
        assert await sup.call("limited", "echo", {"n": 1}, timeout=5) == {"n": 1}

        runner = sup.runner("limited")
        assert runner.process is not None
        pid = runner.process.pid
        assert await sup.call("limited", "pid", timeout=5) == pid  # no shim in between
        seen = await sup.call("limited", "rlimits", timeout=5)
        host_view = psutil.Process(pid)  # /proc/<pid>/limits
        for name, value in asked.items():
            want = expected(value, RLIMIT_IDS[name])
            assert seen[name] == [want, want], name
            assert host_view.rlimit(RLIMIT_IDS[name]) == (want, want), name

        # the supervisor is up and serving; ours are untouched
        assert runner.instance == 1
        assert await sup.call("limited", "echo", {"n": 2}, timeout=5) == {"n": 2}
        assert {name: resource.getrlimit(RLIMIT_IDS[name]) for name in asked} == ours

    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING
                and r.name == "pipevisor.supervisor.proc.containment"]
    assert len(warnings) == 1, warnings
    (text,) = warnings
    assert reason in text
    assert "'session'" in text
    assert "setsid" in text and "rlimit" in text  # what is lost, in so many words


def test_wrap_command_never_asks_for_preexec_fn() -> None:
    """anyio.open_process takes no preexec_fn (and it is unsafe with threads): without the
    shim the rlimits are set after the spawn instead."""
    none = _platform.Containment("session", None, "test")
    argv, kwargs = _platform.wrap_command(["plugin", "--x"], none, {"core": 0, "nofile": 64})
    assert argv == ["plugin", "--x"]
    assert kwargs == {"start_new_session": True}


@pytest.mark.anyio
async def test_the_checker_runs_plugins_without_the_shim(
        environ: dict[str, str | None]) -> None:
    """`pipevisor check` spawns through the same containment layer (the --no-shim CI pass
    leaves test_checker.py out, so this covers it)."""
    environ["PIPEVISOR_SHIM"] = "0"
    report = await check_plugin((str(ECHO),), CheckOptions(timeout=2.0, grace=2.0,
                                                           idle_seconds=0.3))
    assert report.ok, report.to_json()
