"""The real ``pipevisor`` CLI against the real ``pipevisor run`` process (issue #7):
every command a user types, across process boundaries, with real plugins.

What test_run.py already covers through the Python client (SIGHUP diff with an
in-flight call, SIGTERM/SIGINT exit 0, bad configuration exit 2, a second
daemon refused, default configuration) is checked here only where the CLI adds
something: what the commands print and how they exit."""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psutil
import pytest

from pipevisor.supervisor.cli.control import (
    EXIT_ERROR,
    EXIT_NO_DAEMON,
    EXIT_UNAVAILABLE,
    EXIT_UNKNOWN_PLUGIN,
    EXIT_USAGE,
)
from tests.daemon.daemon_helpers import ECHO, ROOT, Daemon, fake_table, running_daemon, write_config


def cli(d: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipevisor.supervisor", *args,
                           "--socket", d.socket],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=ROOT)


def ok_json(d: Daemon, *args: str) -> Any:
    proc = cli(d, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def plugins(d: Daemon) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in ok_json(d, "status")["plugins"]}


def config(plugin_dir: str) -> str:
    """Two fake plugins by command, and ``echo`` found by discovery in ``plugin_dir``."""
    return (f'[discovery]\ndirs = ["{plugin_dir}"]\nuse_path = false\n\n'
            '[defaults]\nrestart = { first_backoff = 0.05 }\n\n'
            + fake_table("alpha") + fake_table("beta"))


@pytest.fixture
def daemon(sock_dir: str) -> Iterator[Daemon]:
    plugin_dir = os.path.join(sock_dir, "plugins")
    os.mkdir(plugin_dir, 0o755)
    os.symlink(ECHO, os.path.join(plugin_dir, "pipevisor-echo"))
    with running_daemon(sock_dir, config(plugin_dir)) as d:
        yield d


class LineReader:
    """A CLI process whose stdout lines are read by a thread, so the test can
    wait for a line with a deadline instead of blocking on readline."""

    def __init__(self, d: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipevisor.supervisor", *args, "--socket", d.socket],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, match: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr \
                    else "exited"
                continue
            self.seen.append(line)
            if match(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; saw {self.seen[-20:]}")

    def close(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            return self.proc.wait(30)
        finally:
            for f in (self.proc.stdout, self.proc.stderr):
                if f:
                    f.close()


def test_status_call_and_lifecycle_commands(daemon: Daemon) -> None:
    d = daemon
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600

    status = ok_json(d, "status")
    assert status["daemon"]["pid"] == d.proc.pid
    assert status["daemon"]["config"] == d.config
    found = {p["name"]: p for p in status["plugins"]}
    assert set(found) == {"alpha", "beta", "echo"}
    assert all(p["state"] == "ready" for p in found.values())
    daemon_tree = {c.pid for c in psutil.Process(d.proc.pid).children(recursive=True)}
    assert {p["pid"] for p in found.values()} <= daemon_tree

    human = cli(d, "status")
    assert human.returncode == 0, human.stderr
    rows = {line.split()[0]: line for line in human.stdout.splitlines() if line.split()}
    for name in ("alpha", "beta", "echo"):
        assert "ready" in rows[name] and str(found[name]["pid"]) in rows[name], human.stdout

    # call: the result on stdout; the plugin's error on stderr with exit 1
    assert ok_json(d, "call", "alpha", "echo", '{"hello": "world"}') == {"hello": "world"}
    assert orjson.loads(cli(d, "call", "echo", "echo", '{"text": "hi"}').stdout)
    bad = cli(d, "call", "alpha", "no_such_method", "{}")
    assert bad.returncode == EXIT_ERROR and bad.stdout == ""
    assert "no method no_such_method" in bad.stderr
    bad_json = cli(d, "call", "alpha", "no_such_method", "{}", "--json")
    err = orjson.loads(bad_json.stderr)
    assert err["exit"] == EXIT_ERROR and err["error"]["code"] == -32601
    assert cli(d, "call", "nobody", "echo", "{}").returncode == EXIT_UNKNOWN_PLUGIN
    assert cli(d, "call", "alpha", "echo", "not json").returncode == EXIT_USAGE

    # stop / start / restart touch only the named plugin
    beta_pid = found["beta"]["pid"]
    assert ok_json(d, "stop", "alpha")["state"] == "stopped"
    assert cli(d, "call", "alpha", "echo", "[1]").returncode == EXIT_UNAVAILABLE
    started = cli(d, "start", "alpha")
    assert started.returncode == 0 and started.stdout.startswith("alpha: ready (pid "), started
    alpha_pid = plugins(d)["alpha"]["pid"]
    restarted = ok_json(d, "restart", "alpha")
    assert restarted["state"] == "ready" and restarted["pid"] != alpha_pid
    assert ok_json(d, "call", "alpha", "echo", "[2]") == [2]
    after = plugins(d)
    assert after["beta"]["pid"] == beta_pid and after["beta"]["restarts"] == 0
    # #19: an operator's restart is counted apart from the policy's
    assert after["alpha"]["requested_restarts"] == 1 and after["alpha"]["restarts"] == 0
    row = next(line for line in cli(d, "status").stdout.splitlines()
               if line.startswith("alpha "))
    assert " 0+1 " in row, row


def test_load_and_unload_at_run_time_by_path_and_by_name(daemon: Daemon,
                                                          sock_dir: str) -> None:
    d = daemon
    before = plugins(d)
    other = os.path.join(sock_dir, "pipevisor-other")  # outside the discovery dirs
    os.symlink(ECHO, other)
    loaded = ok_json(d, "load", other)
    assert loaded["name"] == "other" and loaded["state"] == "ready"
    assert ok_json(d, "call", "other", "echo", '{"text": "x"}') is not None

    assert cli(d, "unload", "echo").returncode == 0
    assert cli(d, "call", "echo", "echo", "{}").returncode == EXIT_UNKNOWN_PLUGIN
    assert ok_json(d, "load", "echo")["state"] == "ready"  # the discovered name again
    unknown = cli(d, "load", "nothing")
    assert unknown.returncode == EXIT_USAGE and "nothing" in unknown.stderr
    assert "looked for pipevisor-nothing in" in unknown.stderr  # #19: says where

    now = plugins(d)
    assert set(now) == {"alpha", "beta", "echo", "other"}
    for name in ("alpha", "beta"):  # untouched
        assert now[name]["pid"] == before[name]["pid"] and now[name]["restarts"] == 0


def test_metrics_prints_the_prometheus_text(daemon: Daemon) -> None:
    d = daemon
    assert cli(d, "call", "alpha", "echo", '{"x": 1}').returncode == 0
    assert cli(d, "call", "alpha", "no_such_method").returncode != 0
    proc = cli(d, "metrics")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "# TYPE pipevisor_plugin_calls_total counter" in lines
    assert 'pipevisor_plugin_calls_total{plugin="alpha",outcome="ok"} 1' in lines
    assert 'pipevisor_plugin_calls_total{plugin="alpha",outcome="plugin_error"} 1' in lines
    assert {f'pipevisor_plugin_up{{plugin="{n}"}} 1' for n in ("alpha", "beta", "echo")} \
        <= set(lines)
    families = {f["name"]: f for f in ok_json(d, "metrics")["metrics"]}
    assert {"name": "pipevisor_plugin_up", "labels": {"plugin": "alpha"}, "value": 1.0} \
        in families["pipevisor_plugin_up"]["samples"]


def test_reload_by_command_and_by_sighup(daemon: Daemon) -> None:
    d = daemon
    before = plugins(d)
    with open(d.config) as f:
        text = f.read()
    write_config(d.config, text + fake_table("gamma"))
    preview = cli(d, "reload", "--dry-run")  # #19: what would change, nothing done
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.splitlines() == ["dry run: changes", "  would start: gamma"]
    assert "gamma" not in plugins(d)
    summary = ok_json(d, "reload")
    assert summary["started"] == ["gamma"] and not summary["errors"]
    human = cli(d, "reload")  # the same file again: #19, no empty "started:" lines
    assert human.returncode == 0, human
    assert human.stdout.startswith("reloaded: nothing changed"), human.stdout
    assert "started:" not in human.stdout and "unchanged: alpha" in human.stdout

    write_config(d.config, (text + fake_table("gamma")).replace(fake_table("beta"), ""))
    d.proc.send_signal(signal.SIGHUP)
    # the reloads above notified too, so wait on what status shows, with a deadline
    deadline = time.monotonic() + 30
    while set(now := plugins(d)) != {"alpha", "echo", "gamma"}:
        assert time.monotonic() < deadline, f"SIGHUP not applied: {sorted(now)}"
        time.sleep(0.05)
    assert "SIGHUP" in d.stderr()
    assert now["alpha"]["pid"] == before["alpha"]["pid"]

    write_config(d.config, "[plugins.broken]\n")
    refused = cli(d, "reload")
    assert "plugins.broken: no command or path" in refused.stdout + refused.stderr, refused
    assert set(plugins(d)) == {"alpha", "echo", "gamma"}


def test_a_refused_reload_exits_2_with_the_reason_on_stderr(daemon: Daemon,
                                                            sock_dir: str) -> None:
    d = daemon
    with open(d.config) as f:
        good = f.read()
    before = plugins(d)
    write_config(d.config, "[plugins.broken]\n")
    refused = cli(d, "reload")
    assert refused.returncode == EXIT_USAGE and "plugins.broken" in refused.stderr, refused
    assert "refused" in refused.stderr and refused.stdout == ""
    # --json: the daemon's summary on stdout (nothing changed), the error line on stderr
    as_json = cli(d, "reload", "--json")
    assert as_json.returncode == EXIT_USAGE, as_json
    summary = orjson.loads(as_json.stdout)
    assert summary["started"] == summary["stopped"] == summary["restarted"] == []
    err = orjson.loads(as_json.stderr)
    assert err["exit"] == EXIT_USAGE and "plugins.broken" in err["error"]["errors"][0]
    assert {n: p["pid"] for n, p in plugins(d).items()} == {
        n: p["pid"] for n, p in before.items()}

    # applied in part: gamma starts, but "other" (loaded at run time) keeps its name
    other = os.path.join(sock_dir, "pipevisor-other")
    os.symlink(ECHO, other)
    assert ok_json(d, "load", other)["name"] == "other"
    write_config(d.config, good + fake_table("gamma") + fake_table("other"))
    partial = cli(d, "reload")
    assert partial.returncode == EXIT_USAGE, partial
    assert "started: gamma" in partial.stdout and "other" in partial.stderr, partial
    assert set(plugins(d)) == {"alpha", "beta", "echo", "gamma", "other"}


def test_logs_and_events_follow_a_crash_and_restart(daemon: Daemon) -> None:
    d = daemon
    events = LineReader(d, "events", "--json", "--kind", "state", "--kind", "exit",
                        "--kind", "restart", "--kind", "stderr")
    try:
        # the subscription is live once a probe line from beta comes through
        deadline = time.monotonic() + 30
        while True:
            assert cli(d, "call", "beta", "stderr_flood", '{"lines": 100}').returncode == 0
            try:
                events.wait_for(lambda line: '"beta"' in line, timeout=1)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "events never delivered"

        alpha_pid = plugins(d)["alpha"]["pid"]
        crashed = cli(d, "call", "alpha", "crash", '{"code": 3}')
        assert crashed.returncode == EXIT_UNAVAILABLE, crashed

        def alpha(kind: str, **fields: Any) -> Callable[[str], bool]:
            def match(line: str) -> bool:
                ev = orjson.loads(line)
                return bool(ev.get("plugin") == "alpha" and ev.get("kind") == kind
                            and all(ev.get(k) == v for k, v in fields.items()))
            return match

        events.wait_for(alpha("stderr", line="fake plugin crashing on purpose with code 3"))
        events.wait_for(alpha("exit"))
        events.wait_for(alpha("restart"))
        events.wait_for(alpha("state", to="ready"))
    finally:
        events.close()

    restarted = plugins(d)["alpha"]
    assert restarted["pid"] != alpha_pid and restarted["restarts"] == 1
    logs = cli(d, "logs", "alpha", "-n", "5")
    assert logs.returncode == 0
    assert "fake plugin crashing on purpose with code 3" in logs.stdout
    tail = cli(d, "logs", "beta", "-n", "3").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in tail[1:]] == ["x" * 100] * 3
    # the crash and the restart: lines of both instances, each run marked
    assert "-- alpha instance 1 --" in logs.stdout or "-- alpha instance 2 --" in logs.stdout
    assert cli(d, "logs", "nobody").returncode == EXIT_UNKNOWN_PLUGIN


def test_after_sigterm_the_cli_reports_no_daemon(daemon: Daemon) -> None:
    d = daemon
    tree = [c.pid for c in psutil.Process(d.proc.pid).children(recursive=True)]
    assert tree
    assert d.stop() == 0
    assert not [pid for pid in tree if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    gone = cli(d, "status")
    assert gone.returncode == EXIT_NO_DAEMON and d.socket in gone.stderr
