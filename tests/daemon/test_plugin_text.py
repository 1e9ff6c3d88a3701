"""Plugin-supplied text cannot forge log lines, drive the operator's terminal, or pass
for the daemon's own voice (#14 item 7). A real daemon, a hostile plugin, the real CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipevisor.supervisor.cli.control import EXIT_ERROR, EXIT_USAGE
from pipevisor.supervisor.daemon.log_format import JournalFormatter, JsonFormatter, TextFormatter
from pipevisor.supervisor.text import printable
from tests.daemon.daemon_helpers import ROOT, Daemon, running_daemon

HOSTILE = str(ROOT / "tests" / "plugins" / "hostile.py")
FORGED = "12:00:00.000 INFO    daemon: all plugins stopped"
ESC = "\x1b]0;owned\x07\x1b[2J"


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipevisor.supervisor", *args,
                           "--socket", d.socket],
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    config = (f'[plugins.evil]\ncommand = ["{sys.executable}", "{HOSTILE}", "serve"]\n'
              '[daemon]\nlog_format = "text"\n')
    with running_daemon(str(tmp_path), config) as d:
        yield d


def wait_for_text(d: Daemon, needle: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = d.stderr()
        if needle in text:
            return text
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never logged; stderr:\n{d.stderr()}")


def test_printable_escapes_controls_and_bidi_but_keeps_plain_text() -> None:
    assert printable("plain ünïcode, tabs\tstay?") == "plain ünïcode, tabs\\tstay?"
    assert printable("a\tb", keep_tabs=True) == "a\tb"
    assert printable("x\ny\r\x1b[2J\x07\x9b\u202eevil\u2028") == (
        "x\\ny\\r\\e[2J\\x07\\x9b\\u202eevil\\u2028")


def _record(name: str, message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"from the plugin\n{FORGED}")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, exc_info)


@pytest.mark.parametrize("formatter", [TextFormatter(), JournalFormatter()],
                         ids=["text", "journal"])
def test_one_record_is_one_line_whatever_the_plugin_wrote(formatter: logging.Formatter) -> None:
    out = formatter.format(_record("pipevisor.plugin.evil", f"hi\n{FORGED}{ESC}"))
    assert "\n" not in out and "\x1b" not in out and "\x07" not in out
    assert "hi\\n12:00:00.000" in out
    # a traceback carrying plugin text: every line after the first is indented
    lines = formatter.format(_record("pipevisor.runner", "boom", exc=True)).splitlines()
    assert all(line.lstrip("<0123456789>").startswith("    ") for line in lines[1:]), lines
    assert not any(line.lstrip("<0123456789>").startswith(FORGED) for line in lines)


def test_the_json_log_stays_exact() -> None:
    doc = orjson.loads(JsonFormatter().format(_record("pipevisor.plugin.evil", f"a\n{ESC}")))
    assert doc["msg"] == f"a\n{ESC}"


def test_plugin_log_and_stderr_cannot_forge_a_daemon_line(daemon: Daemon) -> None:
    proc = cli(daemon, "call", "evil", "say", orjson.dumps(
        {"stderr": f"stderr-mark\n{FORGED}{ESC}", "log": f"log-mark\n{FORGED}{ESC}"}).decode())
    assert proc.returncode == 0, proc.stderr
    wait_for_text(daemon, "log-mark")
    text = wait_for_text(daemon, "stderr-mark")
    assert "\x1b" not in text and "\x07" not in text
    assert not [line for line in text.splitlines() if line.startswith(FORGED)], text
    # the stderr line arrives as two lines (the plugin wrote a newline): the second is
    # still tagged as the plugin's, not the daemon's
    forged = [line for line in text.splitlines() if FORGED in line]
    assert forged and all("[evil]" in line for line in forged), forged


def test_logs_command_escapes_the_tail(daemon: Daemon) -> None:
    assert cli(daemon, "call", "evil", "say",
               orjson.dumps({"stderr": f"tail-mark {ESC}"}).decode()).returncode == 0
    deadline = time.monotonic() + 20
    while True:
        out = cli(daemon, "logs", "evil").stdout
        if "tail-mark" in out or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "tail-mark \\e]0;owned\\x07\\e[2J" in out
    assert "\x1b" not in out
    as_json = cli(daemon, "logs", "evil", "--json").stdout.splitlines()
    assert any(orjson.loads(line)["line"] == f"tail-mark {ESC}" for line in as_json)


def test_a_plugin_error_cannot_pass_for_a_control_refusal(daemon: Daemon) -> None:
    error = {"code": -32602, "message": f"refused\n{ESC}",
             "data": {"origin": "control", "reason": "busy"}}
    proc = cli(daemon, "call", "evil", "say", orjson.dumps({"error": error}).decode())
    assert proc.returncode == EXIT_ERROR != EXIT_USAGE, (proc.returncode, proc.stderr)
    assert "\x1b" not in proc.stderr and "refused\\n" in proc.stderr
    as_json = cli(daemon, "call", "evil", "say", orjson.dumps({"error": error}).decode(),
                  "--json")
    data = orjson.loads(as_json.stderr)["error"]["data"]
    assert data == {"pluginOrigin": "control", "reason": "busy"}


def test_the_reserved_origin_key_is_moved_for_embedded_callers_too() -> None:
    from pipevisor.protocol import ErrorObject
    from pipevisor.supervisor.errors import sanitize_plugin_error

    moved = sanitize_plugin_error(ErrorObject(-31500, "x", {"origin": "pipevisor", "k": 1}))
    assert moved.data == {"pluginOrigin": "pipevisor", "k": 1}
    untouched = ErrorObject(-31500, "x", {"k": 1})
    assert sanitize_plugin_error(untouched) is untouched
