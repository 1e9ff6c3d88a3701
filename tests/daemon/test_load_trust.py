"""`load PATH` follows the rule discovery applies, and a path means the caller's path
(#14 item 5): a real daemon, the real CLI and the client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipevisor.supervisor.cli.control import EXIT_USAGE
from pipevisor.supervisor.client import Client, ControlError
from tests.daemon.daemon_helpers import ECHO, Daemon, fake_table, running_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    run = tmp_path / "run"
    run.mkdir()
    with running_daemon(str(run), fake_table("alpha")) as d:
        yield d


def plugin_copy(folder: Path, name: str, mode: int = 0o755) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copy(ECHO, target)
    target.chmod(mode)
    return target


def cli(d: Daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipevisor.supervisor", *args,
                           "--socket", d.socket, "--json"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def test_a_relative_path_is_the_callers_not_the_daemons(daemon: Daemon,
                                                        tmp_path: Path) -> None:
    here = tmp_path / "mine"
    plugin_copy(here, "pipevisor-local")
    proc = cli(daemon, here, "load", "pipevisor-local")  # a file in the caller's cwd
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["name"] == "local"
    assert cli(daemon, here, "unload", "local").returncode == 0
    proc = cli(daemon, tmp_path, "load", "./mine/pipevisor-local")
    assert proc.returncode == 0, proc.stderr  # the same file, relative to another cwd
    assert orjson.loads(proc.stdout)["name"] == "local"


def test_the_daemon_refuses_a_relative_path(daemon: Daemon) -> None:
    with Client(daemon.socket) as c, pytest.raises(ControlError, match="relative path"):
        c.load("mine/pipevisor-x")


def test_load_refuses_what_discovery_would_skip(daemon: Daemon, tmp_path: Path) -> None:
    loose = plugin_copy(tmp_path / "loose", "pipevisor-loose", 0o775)
    shared = tmp_path / "shared"
    plugin_copy(shared, "pipevisor-shared")
    shared.chmod(0o777)
    for path, why in ((loose, "writable by its group"), (shared / "pipevisor-shared",
                                                         "writable by every user")):
        proc = cli(daemon, tmp_path, "load", str(path))
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert why in proc.stderr and "refusing to load" in proc.stderr
    with Client(daemon.socket) as c:
        assert {p["name"] for p in c.status()["plugins"]} == {"alpha"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_load_refuses_another_users_file(daemon: Daemon, tmp_path: Path) -> None:
    theirs = plugin_copy(tmp_path / "theirs", "pipevisor-theirs")
    os.chown(theirs, 65534, -1)
    with Client(daemon.socket) as c, pytest.raises(ControlError, match="owned by uid 65534"):
        c.load(str(theirs))


def test_load_by_name_also_looks_on_the_callers_path(daemon: Daemon, tmp_path: Path) -> None:
    """#19: `pipevisor load NAME` looked the name up on the daemon's PATH only; a plugin
    on the caller's PATH is now found there and sent by its absolute path."""
    mine = tmp_path / "mybin"
    plugin_copy(mine, "pipevisor-mine")
    env = {**os.environ, "PATH": f"{mine}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "pipevisor.supervisor", "load", "mine",
                           "--socket", daemon.socket, "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = orjson.loads(proc.stdout)
    assert loaded["name"] == "mine" and loaded["command"] == [str(mine / "pipevisor-mine")]
