"""``pipevisor logs NAME`` after a daemon restart still has what the plugin wrote before
it (#19), marked as the previous daemon run; the file that carries it is bounded, and
a corrupt, huge or planted one is ignored with one warning. Real daemons, one after
the other on the same state dir, and a real plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipevisor.supervisor.client import Client
from tests.daemon import daemon_helpers


def running_daemon(folder: str, config_text: str) -> Any:
    """The next daemon on the same folder (so the same state dir): the previous one's
    notification socket file goes first."""
    notify = Path(folder) / "notify.sock"
    if notify.exists():
        notify.unlink()
    return daemon_helpers.running_daemon(folder, config_text)

TALKER = str(Path(__file__).resolve().parent / "talker_plugin.py")
CLI = [sys.executable, "-m", "pipevisor.supervisor"]


def config(extra: str = "") -> str:
    return f'[plugins.talk]\ncommand = ["{sys.executable}", "{TALKER}"]\n{extra}'


def kept_file(folder: str) -> Path:
    return Path(folder) / "pipevisor" / "stderr-tail.talk.json"


def logs(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "logs", "talk", *args], capture_output=True, text=True,
                          env={**os.environ, "PIPEVISOR_SOCKET": sock}, timeout=60,
                          check=False)


def wait_line(client: Client, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in client.logs("talk", 1000):
        assert time.monotonic() < deadline, f"{text!r} never reached the tail"
        time.sleep(0.02)


def test_logs_after_a_restart_show_the_previous_run_marked(sock_dir: str) -> None:
    with running_daemon(sock_dir, config()) as first:
        with Client(first.socket) as client:
            assert client.call("talk", "say", {"text": "before the restart"})
            wait_line(client, "before the restart")
        assert first.stop() == 0
    saved = kept_file(sock_dir)
    assert saved.stat().st_mode & 0o777 == 0o600
    with running_daemon(sock_dir, config()) as second:
        with Client(second.socket) as client:
            assert client.call("talk", "say", {"text": "after the restart"})
            wait_line(client, "after the restart")
            status = client.status()["plugins"][0]
        text = logs(second.socket)
        assert text.returncode == 0, text.stderr
        shown = text.stdout.splitlines()
        # the old lines, its last words at the stop included, then this run's
        assert shown[0] == "-- talk instance 1 (previous daemon run) --"
        older = shown[:shown.index("-- talk instance 1 --")]
        assert any(line.endswith(" before the restart") for line in older)
        assert any(" bye from " in line for line in older), shown  # said at the stop
        newer = shown[shown.index("-- talk instance 1 --"):]
        assert any(line.endswith(" after the restart") for line in newer)
        assert not any("before the restart" in line for line in newer)
        as_json = [orjson.loads(line) for line in logs(second.socket, "--json").stdout
                   .splitlines()]
        flags = {entry["line"]: entry["previous"] for entry in as_json}
        assert flags["before the restart"] is True and flags["after the restart"] is False
        # status and crash reports are this run's only
        assert not any("before the restart" in line for line in status["stderr_tail"])
    # a third run still has the first run's lines (carried twice) and the second's
    with running_daemon(sock_dir, config()) as third:
        as_json = [orjson.loads(line) for line in logs(third.socket, "--json").stdout
                   .splitlines()]
        lines = [entry["line"] for entry in as_json]
        assert "before the restart" in lines and "after the restart" in lines
        assert all(entry["previous"] for entry in as_json)


def test_the_kept_file_is_bounded_by_the_plugins_tail(sock_dir: str) -> None:
    bounds = "stderr_lines = 5\nstderr_tail_bytes = 4096\n"
    with running_daemon(sock_dir, config(bounds)) as daemon, Client(daemon.socket) as client:
        for i in range(40):
            client.call("talk", "say", {"text": f"line {i} " + "z" * 200})
        wait_line(client, "line 39 " + "z" * 200)
    data = orjson.loads(kept_file(sock_dir).read_bytes())
    assert len(data["lines"]) == 5  # the tail's own bounds: the newest five
    assert data["lines"][-1][2].startswith("bye from")
    assert kept_file(sock_dir).stat().st_size < 6 * 4096 + 64 * 5 + 4096


def _warnings(daemon: Any) -> list[str]:
    return [line for line in daemon.stderr().splitlines() if "stderr-tail.talk.json" in line]


@pytest.mark.parametrize("attack", ["bad-json", "wrong-shape", "huge", "symlink", "fifo",
                                    "bad-rows"])
def test_a_corrupt_or_planted_file_is_ignored_with_one_warning(sock_dir: str,
                                                              attack: str) -> None:
    state = Path(sock_dir) / "pipevisor"
    state.mkdir(mode=0o700)
    path = state / "stderr-tail.talk.json"
    secret = Path(sock_dir) / "secret.txt"
    secret.write_text("not for the daemon\n")
    if attack == "bad-json":
        path.write_bytes(b'{"version": 1, "plugin": "talk", "lines": [[1, 1, "x"')
    elif attack == "wrong-shape":
        path.write_bytes(b'{"version": 1, "plugin": "other", "lines": []}')
    elif attack == "huge":  # far past what a 5-line, 1 KiB tail can make
        with open(path, "wb") as fh:
            fh.write(b'{"version": 1, "plugin": "talk", "lines": [')
            fh.write(b'[1, 1, "' + b"h" * (64 << 20) + b'"]]}')
    elif attack == "symlink":
        path.symlink_to(secret)
    elif attack == "fifo":
        os.mkfifo(path, 0o600)
    else:  # readable, but rows a hostile writer chose: only well-formed rows count
        path.write_bytes(orjson.dumps({"version": 1, "plugin": "talk", "lines": [
            "x", [1], [None, 1, "no time"], [1.0, "1", "bad instance"], [1.0, 1, 5],
            [float(1), 2, "good row"], {"a": 1}]}))
    if not path.is_symlink():
        os.chmod(path, 0o600)
    bounds = "stderr_lines = 5\nstderr_tail_bytes = 1024\n"
    with running_daemon(sock_dir, config(bounds)) as daemon:
        with Client(daemon.socket) as client:
            client.call("talk", "say", {"text": "fresh"})
            wait_line(client, "fresh")
            entries = client.request("logs", {"plugin": "talk", "lines": 100})
            assert client.status()["plugins"][0]["state"] in ("ready", "degraded")
        warned = _warnings(daemon)
    if attack == "bad-rows":
        assert entries["lines"][0] == "good row" and entries["entries"][0]["previous"]
        assert warned == []
    else:
        assert entries["lines"] == ["fresh"], entries
        assert len(warned) == 1, warned
        assert "ignoring" in warned[0]
    assert secret.read_text() == "not for the daemon\n"  # never written through the link
    if attack in ("symlink", "fifo"):  # replaced by the stop's rename, not written through
        assert path.is_file() and not path.is_symlink()
