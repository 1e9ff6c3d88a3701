"""``pipevisor status NAME...`` shows each plugin's last stderr lines under its row, as
``systemctl status`` shows a unit's log (#19); ``-n`` says how many, ``--json`` has them
per plugin, and ``status`` without names stays the table alone. A real daemon and a
real plugin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson

from pipevisor.supervisor.client import Client
from tests.daemon.daemon_helpers import running_daemon

TALKER = str(Path(__file__).resolve().parent / "talker_plugin.py")
CLI = [sys.executable, "-m", "pipevisor.supervisor"]
CONFIG = "".join(f'[plugins.{name}]\ncommand = ["{sys.executable}", "{TALKER}"]\n'
                 for name in ("talk", "quiet"))
STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d ")


def status(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "status", *args], capture_output=True, text=True,
                          env={**os.environ, "PIPEVISOR_SOCKET": sock, "COLUMNS": "80"},
                          timeout=60, check=False)


def test_status_of_named_plugins_shows_their_last_lines(sock_dir: str) -> None:
    with running_daemon(sock_dir, CONFIG) as daemon:
        with Client(daemon.socket) as client:
            for i in range(15):
                client.call("talk", "say", {"text": f"said {i}"})
            deadline = time.monotonic() + 20
            while "said 14" not in client.logs("talk", 100):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        shown = status(daemon.socket, "talk", "quiet")
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout.splitlines()
        head = text.index("talk: last 10 stderr lines")
        assert text[head + 1] == "-- talk instance 1 --"
        body = text[head + 2:head + 12]
        assert [STAMP.sub("", line) for line in body] == [f"said {i}" for i in range(5, 15)]
        assert all(STAMP.match(line) for line in body)
        assert "quiet: last 0 stderr lines (it wrote none that is kept)" in text
        three = status(daemon.socket, "talk", "-n", "3").stdout.splitlines()
        assert [STAMP.sub("", line) for line in three[-3:]] == ["said 12", "said 13", "said 14"]
        assert not any("stderr line" in line for line in status(daemon.socket).stdout
                       .splitlines())  # the overview has no logs, as systemctl status
        data = orjson.loads(status(daemon.socket, "talk", "--json", "-n", "2").stdout)
        [plugin] = data["plugins"]
        assert [e["line"] for e in plugin["logs"]] == ["said 13", "said 14"]
        assert all(e["instance"] == 1 and e["previous"] is False and e["time"] > 0
                   for e in plugin["logs"])
        none = orjson.loads(status(daemon.socket, "talk", "--json", "-n", "0").stdout)
        assert "logs" not in none["plugins"][0]
