"""perf's cache of compiled helpers is run and imported from: it must be ours alone.

``$TMPDIR/pipevisor-perf-<uid>`` has a predictable name, so another local user could
create it first and leave a binary (``build_c``) or a compiled module (``--compiled``)
for perf to run. ``private_cache_dir`` refuses anything but a real directory owned by
this user and writable by nobody else."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from perf.harness import private_cache_dir


@pytest.fixture
def tmpdir_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"pipevisor-perf-{os.getuid()}"


def test_made_private_when_missing(tmpdir_is: Path) -> None:
    assert private_cache_dir() == tmpdir_is
    assert tmpdir_is.stat().st_mode & 0o777 == 0o700
    assert private_cache_dir() == tmpdir_is  # and accepted the second time


def test_writable_by_others_is_refused(tmpdir_is: Path) -> None:
    tmpdir_is.mkdir()
    tmpdir_is.chmod(0o777)
    with pytest.raises(RuntimeError, match="not a private directory"):
        private_cache_dir()


def test_a_symlink_is_refused(tmpdir_is: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    tmpdir_is.symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="not a private directory"):
        private_cache_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user needs root")
def test_another_users_directory_is_refused(tmpdir_is: Path) -> None:
    tmpdir_is.mkdir(mode=0o700)
    os.chown(tmpdir_is, 65534, 65534)
    with pytest.raises(RuntimeError, match="not a private directory"):
        private_cache_dir()
