"""sd_notify against a real datagram socket the test binds (path and abstract), and the
three log formats of the daemon."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from pathlib import Path

import orjson

from pipevisor.supervisor.daemon.log_format import JournalFormatter, JsonFormatter, TextFormatter
from pipevisor.supervisor.daemon.systemd import Notifier


def receive(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(5)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_notify_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled
        assert n.ready("2 plugins ready, 1 failed")
        assert receive(sock) == {"READY": "1", "STATUS": "2 plugins ready, 1 failed"}
        assert n.reloading()
        msg = receive(sock)
        assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
        assert n.stopping() and receive(sock) == {"STOPPING": "1"}
        assert n.watchdog() and receive(sock) == {"WATCHDOG": "1"}
        n.close()


def test_notify_to_an_abstract_socket() -> None:
    name = f"pipevisor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("starting")
        assert receive(sock) == {"STATUS": "starting"}
        n.close()


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and n.watchdog_interval is None
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.ready("x") is False  # logged once, never raised
    gone.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000",
                     "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None


def record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def test_journal_lines_carry_priorities_and_plugin_tags() -> None:
    f = JournalFormatter()
    assert f.format(record("pipevisor.plugin.echo", logging.INFO, "hello")) == "<6>[echo]: hello"
    assert f.format(record("pipevisor.daemon", logging.WARNING, "a\nb")) == "<4>daemon: a\\nb"
    assert f.format(record("pipevisor.runner", logging.ERROR, "x")).startswith("<3>")


def test_text_and_json_lines() -> None:
    text = TextFormatter().format(record("pipevisor.plugin.echo", logging.INFO, "hello"))
    assert text.endswith(" INFO    [echo]: hello") and text[2] == ":"
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("pipevisor.daemon", logging.ERROR, "failed")
        rec.exc_info = sys.exc_info()
    doc = orjson.loads(JsonFormatter().format(rec))
    assert doc["level"] == "error" and doc["logger"] == "pipevisor.daemon"
    assert "ValueError: boom" in doc["exc"] and "plugin" not in doc
    doc = orjson.loads(JsonFormatter().format(record("pipevisor.plugin.a", logging.INFO, "m")))
    assert doc["plugin"] == "a" and doc["msg"] == "m"
