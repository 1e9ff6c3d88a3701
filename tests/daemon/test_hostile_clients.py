"""Hostile or unlucky local clients against a real ``pipevisor run`` (issue #13, items 5b,
5c, 5e and 6): slow event subscribers, lines without a newline, answers over the
client's limit, idle connections and file-descriptor exhaustion. Each test measures
what the daemon holds (RSS with psutil) or shows it keeps serving, with deadlines."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from pipevisor.supervisor.client import Client
from tests.daemon.daemon_helpers import ROOT, Daemon, fake_table, running_daemon
from tests.daemon.hostile_helpers import (
    Lines,
    blaster_table,
    closed_by_peer,
    raw,
    request,
    rss,
)

BASE = "[discovery]\nenabled = false\n\n"
EXIT_BUSY = 7  # pipevisor.supervisor.cli.control.EXIT_BUSY, spelled out so the test predates it
MiB = 1 << 20


def cli(d: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipevisor.supervisor", *args,
                           "--socket", d.socket],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=ROOT)


@contextmanager
def fd_limit(pid: int, spare: int) -> Iterator[int]:
    """Lower the daemon's RLIMIT_NOFILE to what it has open plus ``spare``, for the block."""
    proc = psutil.Process(pid)
    old = proc.rlimit(psutil.RLIMIT_NOFILE)
    limit = proc.num_fds() + spare
    proc.rlimit(psutil.RLIMIT_NOFILE, (limit, old[1]))
    try:
        yield limit
    finally:
        if proc.is_running():
            proc.rlimit(psutil.RLIMIT_NOFILE, old)


# ============================================================ 5b: event subscribers


def test_an_idle_events_subscriber_cannot_make_the_daemon_hold_notifications(
        sock_dir: str) -> None:
    """300 x 1 MiB notifications with one `events` subscriber that never reads: the
    daemon held ~320 MB. Now the subscriber's queue is bounded in bytes; past it the
    subscriber is told "lagged, N dropped" and disconnected."""
    with running_daemon(sock_dir, BASE + blaster_table(sock_dir)) as d, \
            Client(d.socket) as client:
        assert client.call("blaster", "echo", {"value": 1}) == 1
        before = rss(d.proc.pid)
        idle = raw(d.socket)
        request(idle, 1, "subscribe", {})
        lines = Lines(idle)
        assert lines.until(lambda m: m.get("id") == 1)["result"] == {"subscription": 1}
        assert client.call("blaster", "blast", {"count": 300, "size": MiB},
                           timeout=60) == "blasted"
        grown = rss(d.proc.pid) - before
        print(f"RSS growth with an idle subscriber: {grown / MiB:.1f} MiB")
        assert grown < 64 * MiB, f"daemon RSS grew by {grown / MiB:.0f} MiB"
        # what the subscriber finds when it reads at last: some events, the notice, the end
        seen = lines.end(timeout=20)
        kinds = [m["params"]["kind"] for m in seen if m.get("method") == "event"]
        assert kinds and kinds[-1] == "lagged", kinds[-3:]
        notice = [m for m in seen if m.get("method") == "event"][-1]["params"]
        assert notice["count"] >= 1
        assert kinds.count("notification") < 100
        idle.close()
        # everyone else is served as before
        assert client.call("blaster", "echo", {"value": 2}) == 2


# ============================================================ 5c: lines without newline


def test_request_lines_without_newline_are_refused_before_they_are_buffered(
        sock_dir: str) -> None:
    """48 connections sending 4 MiB each without a newline held all of it (+200 MB);
    a single line over the limit was read to its end. Now what is held for unfinished
    lines is bounded daemon-wide and the sender is told and closed."""
    with running_daemon(sock_dir, BASE + fake_table("a")) as d, Client(d.socket) as client:
        assert client.call("a", "echo", [1]) == [1]
        before = rss(d.proc.pid)
        held: list[socket.socket] = []
        refused = 0
        for _ in range(48):
            s = raw(d.socket)
            try:
                s.sendall(b"{" * (4 * MiB))
            except OSError:  # the daemon refused this one and closed it
                refused += 1
            held.append(s)
        grown = rss(d.proc.pid) - before
        print(f"RSS growth, 48 x 4 MiB unfinished lines: {grown / MiB:.1f} MiB")
        assert grown < 80 * MiB, f"daemon RSS grew by {grown / MiB:.0f} MiB"
        assert refused or any(closed_by_peer(s, 0.5) for s in held)
        for s in held:
            s.close()

        long = raw(d.socket)
        try:
            for _ in range(17):
                long.sendall(b"x" * MiB)
        except OSError:
            pass
        notice = Lines(long).until(lambda m: "error" in m, timeout=10)
        assert notice["id"] is None
        assert "longer than" in str(notice["error"]), notice  # type: ignore[index]
        assert closed_by_peer(long, 10)
        long.close()
        assert client.call("a", "echo", [2]) == [2]


# ============================================================ 5e: answers over the limit


def test_logs_over_the_client_line_limit_returns_newest_lines(sock_dir: str) -> None:
    """`pipevisor logs flood -n 1000` waited for ever: the answer was bigger than the
    client's 16 MiB line limit. The daemon now caps the answer (oldest lines left out,
    with a note) and the client fails a too-large answer instead of waiting. (The tail
    is kept large here, 32 MiB, as an operator may configure it.)"""
    table = blaster_table(sock_dir, "flood") + "stderr_tail_bytes = 33554432\n\n"
    with running_daemon(sock_dir, BASE + table) as d:
        with Client(d.socket) as client:
            assert client.call("flood", "spew", {"lines": 300, "size": 64000},
                               timeout=60) == "spewed"
        started = time.monotonic()
        proc = cli(d, "logs", "flood", "-n", "1000", timeout=60)
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        assert took < 30
        marker, *shown = proc.stdout.splitlines()
        assert marker == "-- flood instance 1 --"
        out = [line.split(" ", 1)[1] for line in shown]  # without the time stamp
        assert out and all(line == "s" * 64000 for line in out)
        assert 4 * MiB - 64001 <= sum(len(line) + 3 for line in out) <= 4 * MiB
        assert f"{300 - len(out)} older lines left out" in proc.stderr, proc.stderr


# ============================================================ 6: connections


def test_idle_control_connections_do_not_lock_the_operator_out(sock_dir: str) -> None:
    """128 idle control connections made every command fail with "no daemon". Now the
    oldest idle connection makes room (it is told why) and the command is served."""
    with running_daemon(sock_dir, BASE + fake_table("a")) as d:
        idle = []
        for i in range(128):
            s = raw(d.socket)
            request(s, i, "unsubscribe", {"subscription": 0})  # proves it was accepted
            assert Lines(s).until(lambda m: "result" in m or "error" in m)
            idle.append(s)
        proc = cli(d, "call", "a", "echo", "[1]", timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "[1]"
        notice = Lines(idle[0]).until(lambda m: "error" in m, timeout=10)
        assert notice["error"]["data"]["reason"] == "evicted"  # type: ignore[index]
        for s in idle:
            s.close()


def test_a_busy_daemon_is_not_reported_as_no_daemon(sock_dir: str) -> None:
    """Every connection following events (none idle): a new one is refused with an
    explicit answer, and the CLI says the daemon is busy (exit 7), not that there is
    no daemon (exit 3)."""
    with running_daemon(sock_dir, BASE + fake_table("a")) as d:
        followers = []
        for _ in range(128):
            s = raw(d.socket)
            request(s, 1, "subscribe", {"kinds": ["invalid_result"]})  # never published here
            assert Lines(s).until(lambda m: m.get("id") == 1)["result"]
            followers.append(s)
        proc = cli(d, "status", timeout=30)
        assert proc.returncode == EXIT_BUSY, (proc.returncode, proc.stderr)
        assert "busy" in proc.stderr and "no pipevisor daemon" not in proc.stderr
        for s in followers:
            s.close()
        proc = cli(d, "call", "a", "echo", "[1]", timeout=30)
        assert proc.returncode == 0, proc.stderr


def test_the_control_socket_survives_running_out_of_file_descriptors(sock_dir: str) -> None:
    """Connections the daemon has no descriptor left to accept: it used to retry every
    0.1 s, logging each time, while commands waited for ever. Now an idle connection
    makes room, the command is served, and the failure is logged a bounded number of
    times."""
    with running_daemon(sock_dir, BASE + fake_table("a")) as d:
        with fd_limit(d.proc.pid, 8):
            flood = [raw(d.socket) for _ in range(40)]
            proc = cli(d, "call", "a", "echo", "[1]", timeout=30)
            assert proc.returncode == 0, proc.stderr
            for s in flood:
                s.close()
        assert d.proc.poll() is None
        logged = len(re.findall(r"accept", d.stderr()))
        assert 1 <= logged <= 5, d.stderr()
        with Client(d.socket) as client:
            assert client.call("a", "echo", [2]) == [2]


def test_the_metrics_endpoint_survives_running_out_of_file_descriptors(
        sock_dir: str) -> None:
    """~400 idle connections to metrics_listen: EMFILE in accept crashed the daemon and
    stopped every plugin. Now the daemon keeps running, a scrape still gets its answer
    (the oldest idle connection makes room) and the failure is logged."""
    config = '[daemon]\nmetrics_listen = "127.0.0.1:0"\n' + BASE + fake_table("a")
    with running_daemon(sock_dir, config) as d:
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", d.stderr())
        assert found, d.stderr()
        port = int(found.group(1))
        url = f"http://127.0.0.1:{port}/metrics"
        with fd_limit(d.proc.pid, 16):
            idle = [socket.create_connection(("127.0.0.1", port), timeout=10)
                    for _ in range(60)]
            with urllib.request.urlopen(url, timeout=20) as response:
                assert response.status == 200
                assert b'pipevisor_plugin_up{plugin="a"} 1' in response.read()
            assert d.proc.poll() is None, d.stderr()
            for s in idle:
                s.close()
        with urllib.request.urlopen(url, timeout=20) as response:
            assert response.status == 200
        with Client(d.socket) as client:
            assert client.call("a", "echo", [1]) == [1]
        assert d.proc.poll() is None
        logged = re.findall(r"metrics: accept failed: Too many open files", d.stderr())
        assert 1 <= len(logged) <= 3, d.stderr()


def test_the_control_bounds_are_daemon_settings(sock_dir: str) -> None:
    """[daemon] control_max_connections and control_idle_timeout reach the socket: with a
    cap of 2 and 0.5 s idle, an idle connection is closed within seconds, and a third
    follower is refused busy."""
    settings = ("[daemon]\ncontrol_max_connections = 2\ncontrol_idle_timeout = 0.5\n"
                "metrics_max_connections = 3\n\n")
    with running_daemon(sock_dir, settings + BASE + fake_table("a")) as d:
        idle = raw(d.socket)
        request(idle, 1, "unsubscribe", {"subscription": 0})
        assert Lines(idle).until(lambda m: "result" in m or "error" in m)
        assert closed_by_peer(idle, timeout=10)
        idle.close()
        followers = []
        for _ in range(2):
            s = raw(d.socket)
            request(s, 1, "subscribe", {"kinds": ["invalid_result"]})  # never published here
            assert Lines(s).until(lambda m: m.get("id") == 1)["result"]
            followers.append(s)
        proc = cli(d, "status", timeout=30)
        assert proc.returncode == EXIT_BUSY, (proc.returncode, proc.stderr)
        for s in followers:
            s.close()


def test_bad_control_bounds_are_refused_with_the_key(tmp_path: object) -> None:
    import pytest

    from pipevisor.supervisor.daemon.config_file import load

    path = f"{tmp_path}/bad.toml"
    with open(path, "w") as fh:
        fh.write("[daemon]\ncontrol_max_connections = 0\n")
    with pytest.raises(Exception, match="control_max_connections"):
        load(path)


def test_a_plugin_cannot_use_the_control_socket(sock_dir: str) -> None:
    """Plugins run as the daemon's user, so the socket's mode lets them in; the daemon
    refuses peers inside a plugin's process tree (#14 item 1), and only them."""
    import json

    hostile = ROOT / "tests" / "plugins" / "hostile.py"
    table = f'[plugins.inside]\ncommand = ["{sys.executable}", "{hostile}", "serve"]\n'
    with running_daemon(sock_dir, BASE + table) as d:
        proc = cli(d, "call", "inside", "connect", json.dumps({"path": d.socket}))
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(json.loads(proc.stdout)["answer"])
        assert answer["error"]["data"]["reason"] == "forbidden", answer
        assert "may not use the control socket" in answer["error"]["message"]
        assert "refused a connection from inside plugin inside" in d.stderr()
        status = cli(d, "status")  # a client outside every plugin tree is served
        assert status.returncode == 0 and "inside" in status.stdout


def test_a_plugin_cannot_reach_the_control_socket_by_detaching(sock_dir: str) -> None:
    """The same plugin tries again from a double-forked, setsid grandchild (a daemonised
    helper): it is still inside the plugin's tree (the shim's pid namespace or the
    daemon as subreaper adopts it), so it is refused too."""
    import json
    import os

    hostile = ROOT / "tests" / "plugins" / "hostile.py"
    table = f'[plugins.inside]\ncommand = ["{sys.executable}", "{hostile}", "serve"]\n'
    out = os.path.join(sock_dir, "detached.json")
    with running_daemon(sock_dir, BASE + table) as d:
        proc = cli(d, "call", "inside", "connect",
                   json.dumps({"path": d.socket, "detach": True, "out": out}))
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 10
        while not os.path.exists(out):  # written by the grandchild, then it exits
            assert time.monotonic() < deadline, "the detached helper never answered"
            time.sleep(0.02)
        with open(out) as fh:
            answer = json.loads(json.load(fh)["answer"])
        assert answer["error"]["data"]["reason"] == "forbidden", answer
