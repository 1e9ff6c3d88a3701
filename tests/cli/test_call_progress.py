"""``pipevisor call`` shows the plugin's progress (#19): a bar on a terminal, lines on
request elsewhere, stdout only the result; the daemon relays progress only to a client
that asked, coalesced, so a flooding plugin and a client that does not read cannot
grow the daemon or hold up anyone else. A real daemon, the real kit plugin, a real
pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import orjson

from pipevisor.supervisor.cli.control import progress_text
from pipevisor.supervisor.client import Client
from pipevisor.supervisor.daemon.control import progress_note
from tests.daemon.daemon_helpers import running_daemon
from tests.plugin_kit.pipes import KIT_PLUGIN

CONFIG = f'[plugins.kit]\ncommand = ["{sys.executable}", "{KIT_PLUGIN}"]\n'
CLI = [sys.executable, "-m", "pipevisor.supervisor"]


def _env(sock: str) -> dict[str, str]:
    return {**os.environ, "PIPEVISOR_SOCKET": sock, "COLUMNS": "80"}


def _read_until(fd: int, needle: bytes, seen: bytearray, deadline: float) -> bool:
    """Read ``fd`` into ``seen`` until ``needle`` is in it (True) or the deadline or
    the end of output (False)."""
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            return False
        if not chunk:
            return False
        seen += chunk
    return True


def test_a_terminal_gets_a_live_bar_and_stdout_only_the_result(sock_dir: str) -> None:
    with running_daemon(sock_dir, CONFIG) as daemon:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        proc = subprocess.Popen(
            [*CLI, "call", "kit", "paced_steps", '{"n": 3, "pause": 0.5}'],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
            env=_env(daemon.socket))
        os.close(slave)
        try:
            seen = bytearray()
            assert _read_until(master, b"1/3", seen, time.monotonic() + 30), bytes(seen)
            assert proc.poll() is None  # drawn while the call still runs
            assert _read_until(master, b"3/3", seen, time.monotonic() + 30), bytes(seen)
            out, _ = proc.communicate(timeout=30)
            _read_until(master, b"\0never", seen, time.monotonic() + 0.5)  # the rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
        text = bytes(seen).decode()
        assert proc.returncode == 0, text
        assert out == b"3\n"  # stdout is a pipe: the exact JSON result and nothing else
        assert "\r[########----------------] 1/3 33% step 1\x1b[K" in text
        assert "\r[########################] 3/3 100% step 3\x1b[K" in text
        assert text.endswith("\r\x1b[K")  # the bar is erased before the result shows


def test_off_a_terminal_progress_lines_only_when_asked(sock_dir: str) -> None:
    with running_daemon(sock_dir, CONFIG) as daemon:
        def run(*extra: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([*CLI, "call", "kit", "paced_steps", '{"n": 3}', *extra],
                                  capture_output=True, env=_env(daemon.socket), timeout=60,
                                  check=False)

        quiet = run()
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"3\n", b"")
        lines = run("--progress")
        assert lines.returncode == 0 and lines.stdout == b"3\n"
        shown = lines.stderr.decode().splitlines()
        assert shown and all(line.startswith("progress: ") for line in shown)
        assert shown[-1] == "progress: 3/3 100% step 3"  # the last step is never lost
        as_json = run("--progress", "--json")
        assert as_json.stdout == b"3\n"
        notes = [orjson.loads(line)["progress"] for line in as_json.stderr.splitlines()]
        assert {k: v for k, v in notes[-1].items() if k != "skipped"} == {
            "progress": 3, "total": 3, "message": "step 3"}
        assert len(notes) + sum(note.get("skipped", 0) for note in notes) == 3


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(key)


def _lines(sock: socket.socket, buf: bytearray, deadline: float) -> list[Any]:
    """The complete lines that arrive before the deadline (at least one)."""
    while b"\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1 << 20)
        assert chunk, "the daemon closed the connection"
        buf += chunk
    end = buf.rindex(b"\n")
    out = [orjson.loads(line) for line in bytes(buf[:end]).split(b"\n")]
    del buf[:end + 1]
    return out


def test_a_progress_flood_to_a_client_that_does_not_read_is_coalesced(
        sock_dir: str) -> None:
    """The plugin sends 100,000 progress notifications with 1 KiB messages (100 MiB if
    the daemon queued them) while the client reads nothing; another client is served
    meanwhile, the daemon's peak memory grows by far less than the flood, and once the
    client reads, what it got plus what was skipped is every step, the last one last."""
    n = 100_000
    with running_daemon(sock_dir, CONFIG) as daemon:
        pid = daemon.proc.pid
        with Client(daemon.socket) as other:
            assert other.call("kit", "echo", {"text": "warm"}) == {"text": "warm"}
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")  # peak RSS (VmHWM) measured from here
            base = _vm(pid, "VmHWM")
            stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(daemon.socket)
            request = {"jsonrpc": "2.0", "id": "flood", "method": "call", "params": {
                "plugin": "kit", "method": "paced_steps", "progress": True,
                "params": {"n": n, "pad": 1024}, "timeout": 120}}
            stalled.sendall(orjson.dumps(request) + b"\n")
            try:
                started = time.monotonic()
                while time.monotonic() - started < 3:  # while the flood goes on
                    t0 = time.monotonic()
                    assert other.status()["plugins"][0]["name"] == "kit"
                    assert time.monotonic() - t0 < 2.0, "another client was held up"
                peak = _vm(pid, "VmHWM") - base
                buf = bytearray()
                notes: list[dict[str, Any]] = []
                answer = None
                deadline = time.monotonic() + 120
                while answer is None:
                    for msg in _lines(stalled, buf, deadline):
                        if msg.get("method") == "progress":
                            notes.append(msg["params"])
                        else:
                            answer = msg
            finally:
                stalled.close()
            peak_after = _vm(pid, "VmHWM") - base
    assert answer == {"jsonrpc": "2.0", "id": "flood", "result": n}
    assert notes and all(note["id"] == "flood" for note in notes)
    assert notes[-1]["progress"] == n and notes[-1]["total"] == n
    assert len(notes) + sum(note.get("skipped", 0) for note in notes) == n
    assert len(notes) < n // 10, f"{len(notes)} of {n} sent: not coalesced"
    assert all(len(note["message"]) == 1024 for note in notes)
    assert max(peak, peak_after) < 40 << 20, f"the daemon grew {peak_after >> 20} MiB"


def test_a_call_without_progress_gets_no_notification(sock_dir: str) -> None:
    """Old clients: nothing new on the wire unless asked for."""
    with running_daemon(sock_dir, CONFIG) as daemon:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(daemon.socket)
            sock.sendall(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                                       "params": {"plugin": "kit", "method": "paced_steps",
                                                  "params": {"n": 50}}}) + b"\n")
            got = _lines(sock, bytearray(), time.monotonic() + 30)
        finally:
            sock.close()
        assert got == [{"jsonrpc": "2.0", "id": 1, "result": 50}]
        with Client(daemon.socket) as client:
            heard: list[dict[str, Any]] = []
            assert client.call("kit", "paced_steps", {"n": 5}, on_progress=heard.append) == 5
            assert heard[-1] == {"id": heard[-1]["id"], "progress": 5, "total": 5,
                                 "message": "step 5", **({"skipped": heard[-1]["skipped"]}
                                                         if "skipped" in heard[-1] else {})}


def test_a_listener_that_raises_cancels_its_call(sock_dir: str) -> None:
    with running_daemon(sock_dir, CONFIG) as daemon, Client(daemon.socket) as client:
        def stop(note: dict[str, Any]) -> None:
            raise RuntimeError("enough")

        started = time.monotonic()
        try:
            client.call("kit", "paced_steps", {"n": 100, "pause": 0.2}, on_progress=stop)
        except RuntimeError as exc:
            assert str(exc) == "enough"
        else:
            raise AssertionError("the listener's exception was swallowed")
        assert time.monotonic() - started < 10  # not the 20 s the call would take
        assert client.call("kit", "echo", {"text": "still"}) == {"text": "still"}
        deadline = time.monotonic() + 10
        while (status := client.status()["plugins"][0])["in_flight"]:
            assert time.monotonic() < deadline, "the cancelled call is still in flight"
            time.sleep(0.05)
        assert status["state"] in ("ready", "degraded")  # (kit: host.q is not served)


def test_what_of_a_plugins_progress_params_reaches_the_client() -> None:
    assert progress_note({"id": 9, "progress": 2, "total": 4, "message": "m", "x": 1},
                         "c1", 10) == {"id": "c1", "progress": 2, "total": 4, "message": "m"}
    assert progress_note({"progress": 1.5, "message": "y" * 50}, 3, 10) == {
        "id": 3, "progress": 1.5, "message": "y" * 10}
    for bad in (None, [], {}, {"progress": "1"}, {"progress": True}, {"progress": -1},
                {"progress": float("nan")}, {"progress": 10 ** 30}):
        assert progress_note(bad, 1, 10) is None
    assert progress_note({"progress": 1, "total": "x", "message": 5}, 1, 10) == {
        "id": 1, "progress": 1}
    assert progress_text({"progress": 2, "total": 8, "message": "a\x1b[2Jb"}) == \
        "2/8 25% a\\e[2Jb"
    assert progress_text({"progress": 2.5}) == "2.5"
