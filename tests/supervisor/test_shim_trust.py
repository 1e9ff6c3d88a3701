"""An untouchable shim (issue 14, item 2): pvinit is executed only if it passes the trust
rule, from a sealed in-memory copy made at detection, so that what is on disk later (a
plugin of the same uid overwriting the cached binary, a file planted in a cache dir
someone else owns, a ``./cc`` found through an empty PATH entry) never runs.

Each test starts from a fresh detection in a cache dir of its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipevisor.supervisor import Supervisor, SupervisorConfig
from pipevisor.supervisor.engine.config import HealthPolicy, PluginSpec, StopPolicy
from pipevisor.supervisor.engine.policy import RestartPolicy
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc import shim as _shim

PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "priv_plugin.py"
NOBODY = 65534
CONTAINMENT_LOG = "pipevisor.supervisor.proc.containment"

pytestmark = [
    pytest.mark.skipif(not _platform.IS_LINUX, reason="pvinit is Linux-only"),
    pytest.mark.skipif(os.environ.get("PIPEVISOR_SHIM") == "0",
                       reason="no-shim run: these tests are about the shim"),
]
root_only = pytest.mark.skipif(os.geteuid() != 0,
                               reason="a file of another uid (65534) needs root to make")


def _digest() -> str:
    return hashlib.sha256(_shim._SHIM_SOURCE.read_bytes()
                          + " ".join(_shim._CFLAGS).encode()).hexdigest()[:16]


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh detection with an empty private cache dir (returned); restored after."""
    if _shim._SHIM_SOURCE.with_name("pvinit").exists():
        pytest.skip("a packaged pvinit is installed here: the cache is not used")
    if _shim._find_compiler() is None:
        pytest.skip("no C compiler: no cached shim to test")
    cache = tmp_path / "cache"
    monkeypatch.setenv("PIPEVISOR_CACHE_DIR", str(cache))
    monkeypatch.delenv("PIPEVISOR_SHIM", raising=False)
    _platform.reset_detection_cache()
    try:
        yield cache
    finally:
        monkeypatch.undo()
        _platform.reset_detection_cache()


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == CONTAINMENT_LOG and r.levelno >= logging.WARNING]


def planted(path: Path, marker: Path) -> None:
    """A fake pvinit that leaves ``marker`` behind, then runs the plugin anyway."""
    path.write_text(f'#!/bin/sh\necho ran > {marker}\nwhile [ "$1" != "--" ]; do shift; done\n'
                    'shift\nexec "$@"\n')


def spec() -> PluginSpec:
    return PluginSpec("priv", (sys.executable, "-I", "-S", str(PLUGIN)),
                      restart=RestartPolicy(max_restarts=0),
                      stop=StopPolicy(shutdown_grace=2.0, eof_grace=1.0, term_grace=1.0),
                      health=HealthPolicy(handshake_timeout=10.0, ping_interval=0))


@pytest.mark.anyio
async def test_a_cache_shim_overwritten_after_detection_does_not_run(
        fresh: Path, tmp_path: Path) -> None:
    containment = _platform.detect_containment()
    cached = fresh / f"pvinit-{_digest()}"
    assert cached.exists() and containment.shim is not None, containment
    marker = tmp_path / "the-overwritten-shim-ran"
    planted(cached, marker)  # in place (same inode), as a plugin of our uid could

    async with Supervisor(SupervisorConfig(plugins=[spec()])) as sup:
        await sup.wait_ready(["priv"], timeout=20)
        fds = await sup.call("priv", "fds", timeout=10)
        status = sup.runner("priv").status()
        runner = sup.runner("priv")
        assert runner.process is not None
        exe = os.readlink(f"/proc/{runner.process.pid}/exe")
    assert not marker.exists()
    assert exe.startswith("/memfd:pipevisor-pvinit-"), exe
    assert containment.shim_fd is not None and containment.shim_path == str(cached)
    contained = status["containment"]
    assert (contained["shim_source"], contained["shim_exec"]) == ("cache", "memfd")
    assert contained["shim"] == str(cached)
    assert contained["mechanism"] == containment.mechanism
    assert sorted(fds, key=int) == ["0", "1", "2"], fds  # nothing of the memfd leaks


def test_pvinit_closes_every_inherited_fd(fresh: Path) -> None:
    """An fd passed to pvinit (its own memfd, or anything a careless parent leaves open)
    never reaches the plugin."""
    containment = _platform.detect_containment()
    if containment.shim is None:
        pytest.skip(f"no shim: {containment.detail}")
    extra_r, extra_w = os.pipe()
    try:
        argv, kwargs = _platform.wrap_command(["/bin/ls", "/proc/self/fd"], containment)
        passed = (*kwargs.pop("pass_fds", ()), extra_r, extra_w)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True,
                             pass_fds=passed, **kwargs).stdout.split()
    finally:
        os.close(extra_r)
        os.close(extra_w)
    # 0-2 and the fd ls lists /proc/self/fd with
    assert out == ["0", "1", "2", "3"], out


@root_only
def test_a_planted_untrusted_cache_shim_is_refused(
        fresh: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fresh.mkdir(mode=0o700)
    target = fresh / f"pvinit-{_digest()}"
    marker = tmp_path / "the-planted-shim-ran"
    planted(target, marker)
    target.chmod(0o755)
    os.chown(target, NOBODY, NOBODY)  # someone else's file in our cache dir
    caplog.set_level(logging.WARNING, logger=CONTAINMENT_LOG)
    c = _platform.detect_containment()
    assert (c.mechanism, c.shim) == ("session", None), c
    assert not marker.exists()
    (warning,) = fallback_warnings(caplog)
    assert "cached shim refused" in warning and f"owned by uid {NOBODY}" in warning
    assert str(target) in warning and "'session'" in warning


def test_a_group_writable_override_shim_is_refused(
        fresh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    shim = tmp_path / "pvinit-override"
    marker = tmp_path / "the-override-ran"
    planted(shim, marker)
    shim.chmod(0o775)
    monkeypatch.setenv("PIPEVISOR_SHIM", str(shim))
    caplog.set_level(logging.WARNING, logger=CONTAINMENT_LOG)
    c = _platform.detect_containment()
    assert (c.mechanism, c.shim) == ("session", None), c
    assert not marker.exists()
    (warning,) = fallback_warnings(caplog)
    assert f"PIPEVISOR_SHIM={shim} refused" in warning and "writable by its group" in warning


@root_only
def test_a_cache_dir_owned_by_another_uid_is_refused(
        fresh: Path, caplog: pytest.LogCaptureFixture) -> None:
    fresh.mkdir(mode=0o700)
    os.chown(fresh, NOBODY, NOBODY)
    caplog.set_level(logging.WARNING, logger=CONTAINMENT_LOG)
    c = _platform.detect_containment()
    assert (c.mechanism, c.shim) == ("session", None), c
    assert list(fresh.iterdir()) == []  # nothing compiled into it either
    (warning,) = fallback_warnings(caplog)
    assert f"cache dir {fresh} is owned by uid {NOBODY}" in warning


def test_the_cache_dir_is_made_private(fresh: Path) -> None:
    fresh.mkdir(mode=0o755)
    fresh.chmod(0o755)
    assert _platform.detect_containment().shim is not None
    assert (fresh.stat().st_mode & 0o777) == 0o700


def test_an_empty_path_entry_does_not_find_dot_cc(
        fresh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "dot-cc-ran"
    fake_cc = cwd / "cc"
    fake_cc.write_text(f"#!/bin/sh\necho ran > {marker}\nexit 1\n")
    fake_cc.chmod(0o755)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PATH", os.pathsep + str(tmp_path / "no-such-bin") + os.pathsep + ".")
    caplog.set_level(logging.WARNING, logger=CONTAINMENT_LOG)
    c = _platform.detect_containment()
    assert (c.mechanism, c.shim) == ("session", None), c
    assert not marker.exists()
    (warning,) = fallback_warnings(caplog)
    assert "no C compiler" in warning


def test_a_trusted_compiler_on_an_absolute_entry_is_still_found(
        fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    monkeypatch.setenv("PATH", os.pathsep + "relative" + os.pathsep
                       + os.path.dirname(compiler))
    c = _platform.detect_containment()
    assert c.shim_source == "cache" and c.shim_path is not None
    assert Path(c.shim_path).parent == fresh
