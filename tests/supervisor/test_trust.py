"""The one trust rule for what the supervisor executes (proc/trust.py), on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipevisor.supervisor.proc.trust import TrustRule, UntrustedPath, check_trusted, require_trusted

OTHER_UID = 65534  # nobody
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private folder: tmp_path's parents are ours or root's, /tmp is sticky."""
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def plugin(folder: Path, mode: int = 0o755) -> Path:
    f = folder / "pipevisor-x"
    f.write_text("#!/bin/sh\n")
    f.chmod(mode)
    return f


def test_a_private_executable_is_trusted(home: Path) -> None:
    f = plugin(home)
    assert check_trusted(f) is None
    assert require_trusted(f) == os.path.realpath(f)


@pytest.mark.parametrize(("mode", "why"), [(0o757, "writable by every user"),
                                          (0o775, "writable by its group")])
def test_a_file_others_can_write_is_refused(home: Path, mode: int, why: str) -> None:
    f = plugin(home, mode)
    reason = check_trusted(f)
    assert reason is not None and why in reason and str(f) in reason
    with pytest.raises(UntrustedPath, match=why):
        require_trusted(f)


def test_a_trusted_group_may_write(home: Path) -> None:
    f = plugin(home, 0o775)
    assert check_trusted(f, TrustRule.default(group=f.stat().st_gid)) is None


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_folder_others_can_write_is_refused(home: Path, mode: int) -> None:
    f = plugin(home)
    home.chmod(mode)
    reason = check_trusted(f)
    assert reason is not None and f"folder {home}" in reason


def test_a_sticky_shared_folder_is_accepted_above_our_own_entry(home: Path) -> None:
    f = plugin(home)
    home.chmod(0o777 | stat.S_ISVTX)
    assert check_trusted(f) is None


@needs_root
def test_a_file_of_another_user_is_refused(home: Path) -> None:
    f = plugin(home)
    os.chown(f, OTHER_UID, -1)
    reason = check_trusted(f)
    assert reason is not None and f"owned by uid {OTHER_UID}" in reason


@needs_root
def test_a_folder_of_another_user_is_refused(home: Path) -> None:
    f = plugin(home)
    os.chown(home, OTHER_UID, -1)
    reason = check_trusted(f)
    assert reason is not None and f"folder {home}" in reason and str(OTHER_UID) in reason


@needs_root
def test_another_users_file_in_a_sticky_folder_is_refused(home: Path) -> None:
    f = plugin(home)
    home.chmod(0o777 | stat.S_ISVTX)
    os.chown(f, OTHER_UID, -1)
    assert check_trusted(f) is not None


@needs_root
def test_a_symlink_is_judged_by_what_it_points_to(home: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    target = plugin(theirs)
    os.chown(target, OTHER_UID, -1)
    link = home / "pipevisor-link"
    link.symlink_to(target)
    reason = check_trusted(link)
    assert reason is not None and str(target) in reason


def test_a_missing_file_says_so(home: Path) -> None:
    reason = check_trusted(home / "nope")
    assert reason is not None and "No such file" in reason


@pytest.mark.anyio
async def test_every_start_checks_the_executable_again(home: Path) -> None:
    """A config's command or path follows the same rule as discovery and `load`, at
    every start: a plugin that turned group-writable is not run again."""
    from pipevisor.supervisor import PluginSpec, PluginState, Supervisor

    f = plugin(home, 0o775)
    f.write_text("#!/bin/sh\nexec cat\n")
    async with Supervisor([PluginSpec("x", (str(f),))]) as sup:
        runner = sup.runner("x")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert "refusing to run" in (runner.reason or "")
        assert "writable by its group" in (runner.reason or "")
