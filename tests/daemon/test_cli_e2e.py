"""The real CLI against a daemon in a process of its own (tests/daemon/standin_daemon.py:
a real Supervisor, real plugins and the real control server), across process boundaries."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from supervisor.cli_control import EXIT_NO_DAEMON, EXIT_UNKNOWN_PLUGIN
from tests.daemon.control_helpers import sock_dir

__all__ = ["sock_dir"]

ROOT = Path(__file__).resolve().parents[2]
ECHO = str(ROOT / "examples" / "python-stdlib" / "pipevisor-echo")


def cli(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args, "--socket", path],
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def ok_json(path: str, *args: str) -> object:
    proc = cli(path, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


@pytest.fixture
def daemon(sock_dir: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    path = os.path.join(sock_dir, "control.sock")
    proc = subprocess.Popen([sys.executable, "-m", "tests.daemon.standin_daemon", path,
                             "alpha", "beta"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the socket listens (or the daemon died)
        assert line.startswith("ready"), f"daemon did not start: {line!r}"
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_cli_drives_a_daemon_process(daemon: tuple[subprocess.Popen[str], str]) -> None:
    proc, path = daemon
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    status = ok_json(path, "status")
    assert isinstance(status, dict)
    assert status["daemon"]["pid"] == proc.pid
    assert {p["name"] for p in status["plugins"]} == {"alpha", "beta"}
    alpha_pid = next(p["pid"] for p in status["plugins"] if p["name"] == "alpha")
    assert psutil.Process(alpha_pid).ppid() in (proc.pid, *(
        c.pid for c in psutil.Process(proc.pid).children(recursive=True)))

    assert ok_json(path, "call", "alpha", "echo", '{"hello": "world"}') == {"hello": "world"}

    restarted = ok_json(path, "restart", "alpha")
    assert isinstance(restarted, dict) and restarted["pid"] != alpha_pid
    assert restarted["state"] == "ready"

    # load at run time: an executable by path, then a configured name; beta keeps running
    beta_pid = next(p["pid"] for p in status["plugins"] if p["name"] == "beta")
    loaded = ok_json(path, "load", ECHO)
    assert isinstance(loaded, dict) and loaded["name"] == "echo" and loaded["state"] == "ready"
    assert ok_json(path, "call", "echo", "echo", '{"text": "hi"}') is not None
    assert cli(path, "load", "extra").returncode == 0
    assert cli(path, "unload", "echo").returncode == 0
    assert cli(path, "call", "echo", "echo", "[1]").returncode == EXIT_UNKNOWN_PLUGIN
    after = ok_json(path, "status")
    assert isinstance(after, dict)
    names = {p["name"]: p for p in after["plugins"]}
    assert set(names) == {"alpha", "beta", "extra"}
    assert names["beta"]["pid"] == beta_pid and names["beta"]["restarts"] == 0

    assert ok_json(path, "reload") == {"reloads": 1}


def test_sigterm_removes_socket_and_leaves_no_process(
        daemon: tuple[subprocess.Popen[str], str]) -> None:
    proc, path = daemon
    tree = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert tree
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not os.path.exists(path)
    assert not [pid for pid in tree if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert cli(path, "status").returncode == EXIT_NO_DAEMON


def test_second_daemon_on_the_same_socket_is_refused(
        daemon: tuple[subprocess.Popen[str], str]) -> None:
    proc, path = daemon
    second = subprocess.run([sys.executable, "-m", "tests.daemon.standin_daemon", path, "x"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert second.returncode != 0
    assert f"pid {proc.pid}" in second.stderr and path in second.stderr
    assert ok_json(path, "call", "alpha", "echo", "[2]") == [2]  # the first one is untouched
