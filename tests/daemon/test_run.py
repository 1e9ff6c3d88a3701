"""``pipevisor run`` as a real process: start-up, SIGHUP reload, SIGTERM stop, bad
configuration, the built-in default configuration. Driven through the real control
socket client and observed through a NOTIFY_SOCKET the test binds."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import orjson
import psutil
import pytest

from pipevisor.supervisor.client import Client, ControlError
from tests.daemon.daemon_helpers import ECHO, ROOT, fake_table, running_daemon, write_config


def pids(client: Client) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in client.status()["plugins"]}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


BASE = "[discovery]\nenabled = false\n\n"


def test_sighup_applies_the_difference_and_keeps_in_flight_calls(sock_dir: str) -> None:
    before = BASE + fake_table("alpha") + fake_table("beta") + fake_table("gamma")
    with running_daemon(sock_dir, before) as d, Client(d.socket) as client:
        first = pids(client)
        assert set(first) == {"alpha", "beta", "gamma"}
        result: dict[str, Any] = {}

        def slow_call() -> None:
            with Client(d.socket) as own:
                result["value"] = own.call("alpha", "sleep", {"seconds": 4}, timeout=30)

        caller = threading.Thread(target=slow_call)
        caller.start()
        # beta removed, gamma changed (an env var), delta new, alpha untouched
        after = (BASE + fake_table("alpha")
                 + fake_table("gamma", extra='env = { CHANGED = "1" }')
                 + fake_table("delta"))
        write_config(d.config, after)
        d.proc.send_signal(signal.SIGHUP)
        assert d.notify.wait_for("RELOADING")["MONOTONIC_USEC"].isdigit()
        ready = d.notify.wait_for("READY")
        assert "3 plugins ready" in ready["STATUS"]

        now = pids(client)
        assert set(now) == {"alpha", "gamma", "delta"}
        assert now["alpha"] == first["alpha"]
        assert now["gamma"] != first["gamma"]
        assert gone(first["beta"]) and gone(first["gamma"])
        caller.join(30)
        assert result["value"] == {"slept": 4}

        # the control socket's reload reports the same kind of summary
        summary = client.reload()
        assert summary["unchanged"] == ["alpha", "gamma", "delta"]
        assert summary["started"] == summary["stopped"] == summary["restarted"] == []


def test_a_bad_file_on_reload_is_refused_and_the_plugins_keep_running(sock_dir: str) -> None:
    with running_daemon(sock_dir, BASE + fake_table("alpha")) as d, Client(d.socket) as client:
        first = pids(client)
        write_config(d.config, BASE + fake_table("alpha", extra="restart.max_restarts = -1"))
        summary = client.reload()
        assert summary["errors"] and "plugins.alpha.restart" in summary["errors"][0]
        assert pids(client) == first
        write_config(d.config, "not toml [")
        d.proc.send_signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING")
        d.notify.wait_for("READY")
        assert pids(client) == first
        assert client.call("alpha", "echo", {"still": "here"}) == {"still": "here"}
        assert "reload refused" in d.stderr()


def test_a_reload_applies_log_settings_and_the_sampling_interval(sock_dir: str) -> None:
    """Logging and the sampling interval change in place; settings that would need
    every plugin restarted are named in a warning and wait for the next start."""
    with running_daemon(sock_dir, BASE + fake_table("alpha")) as d, Client(d.socket) as client:
        first = pids(client)
        write_config(d.config, '[daemon]\nlog_format = "json"\nlog_level = "debug"\n'
                     '[supervisor]\nsample_interval = 0.5\nhost_name = "other"\n'
                     + BASE + fake_table("alpha"))
        summary = client.reload()
        assert summary["errors"] == [] and summary["unchanged"] == ["alpha"]
        assert pids(client) == first
        records = [orjson.loads(line) for line in d.stderr().splitlines()
                   if line.startswith("{")]
        messages = [r["msg"] for r in records]
        assert "reload: limits are now sampled every 0.5 s" in messages
        assert "reload: logging is now json at level debug" in messages
        assert any("supervisor.host_name changed" in m and r["level"] == "warning"
                   for r, m in zip(records, messages, strict=True))
        assert not any("sample_interval" in m for r, m in zip(records, messages, strict=True)
                       if r["level"] == "warning")  # applied, so not postponed


def test_sigterm_stops_every_plugin_and_exits_0(sock_dir: str) -> None:
    env = {"WATCHDOG_USEC": "200000", "JOURNAL_STREAM": "8:1234"}
    with running_daemon(sock_dir, BASE + fake_table("alpha") + fake_table("beta"),
                        env=env) as d:
        assert "2 plugins ready" in d.notify.seen[-1]["STATUS"]
        with Client(d.socket) as client:
            plugin_pids = list(pids(client).values())
        d.notify.wait_for("WATCHDOG")
        d.notify.wait_for("WATCHDOG")  # repeated, every 0.1 s
        d.proc.send_signal(signal.SIGTERM)
        d.notify.wait_for("STOPPING")
        assert d.proc.wait(30) == 0
        assert all(gone(p) for p in plugin_pids)
        assert not os.path.exists(d.socket)
        lines = d.stderr().splitlines()
        assert lines and all(line.startswith("<") for line in lines), lines[:5]
        assert any(line.startswith("<6>daemon: SIGTERM") for line in lines)


def test_metrics_are_served_over_http_when_asked(sock_dir: str) -> None:
    config = '[daemon]\nmetrics_listen = "127.0.0.1:0"\n' + BASE + fake_table("alpha")
    with running_daemon(sock_dir, config) as d, Client(d.socket) as client:
        assert client.call("alpha", "echo", {"x": 1}) == {"x": 1}
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", d.stderr())
        assert found, d.stderr()
        url = f"http://127.0.0.1:{found.group(1)}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        assert 'pipevisor_plugin_up{plugin="alpha"} 1\n' in text
        assert 'pipevisor_plugin_calls_total{plugin="alpha",outcome="ok"} 1\n' in text
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.removesuffix("metrics") + "control", timeout=10)
        assert refused.value.code == 404


def test_a_metrics_port_in_use_stops_the_start_with_exit_1(sock_dir: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        cfg = os.path.join(sock_dir, "m.toml")
        write_config(cfg, f'[daemon]\nmetrics_listen = "127.0.0.1:{port}"\n' + BASE
                     + fake_table("alpha"))
        proc = subprocess.run([sys.executable, "-m", "pipevisor.supervisor", "run", "--config", cfg,
                               "--socket", os.path.join(sock_dir, "s.sock")],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 1, proc.stderr
        assert f"cannot start: metrics_listen 127.0.0.1:{port}" in proc.stderr
    finally:
        taken.close()


def test_sigint_stops_too(sock_dir: str) -> None:
    with running_daemon(sock_dir, BASE + fake_table("alpha")) as d:
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(30) == 0


def test_a_second_stop_signal_kills_the_plugins_at_once(sock_dir: str) -> None:
    """A plugin that ignores shutdown, EOF and SIGTERM holds a graceful stop for its
    whole grace periods (two minutes here); a second signal ends it now, exit 130."""
    stubborn = fake_table("stubborn", "--no-shutdown-cap", "--ignore-eof", "--ignore-sigterm",
                          extra="stop = { eof_grace = 60.0, term_grace = 60.0 }")
    with running_daemon(sock_dir, BASE + stubborn + fake_table("calm")) as d:
        with Client(d.socket) as client:
            plugin_pids = pids(client)
        d.proc.send_signal(signal.SIGTERM)
        d.notify.wait_for("STOPPING")
        assert not gone(plugin_pids["stubborn"])  # it ignores all of it for a minute
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(30) == 130
        assert all(gone(p) for p in plugin_pids.values())
        assert "SIGINT again: killing" in d.stderr()


@pytest.mark.parametrize(("text", "where"), [
    ('[plugins.echo]\ncommand = ["x"]\nrestart = { max_restart = 1 }\n',
     "plugins.echo.restart.max_restart: unknown key"),
    ("[daemon]\nlog_format = 'xml'\n", "daemon.log_format: expected one of 'text', 'json'"),
    ("[plugins.nowhere]\n", "plugins.nowhere: no command or path"),
    ("x = [", "not valid TOML"),
    ("[daemon]\nmetrics_listen = 'localhost'\n", "daemon.metrics_listen: expected HOST:PORT"),
])
def test_a_bad_file_is_refused_at_start_with_exit_2(sock_dir: str, text: str,
                                                     where: str) -> None:
    cfg = os.path.join(sock_dir, "bad.toml")
    write_config(cfg, "[discovery]\nenabled = false\n" + text)
    proc = subprocess.run([sys.executable, "-m", "pipevisor.supervisor", "run", "--config", cfg,
                           "--socket", os.path.join(sock_dir, "s.sock")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert cfg in proc.stderr and where in proc.stderr, proc.stderr
    assert not os.path.exists(os.path.join(sock_dir, "s.sock"))


def test_default_config_discovers_plugins_on_path(sock_dir: str) -> None:
    bin_dir = os.path.join(sock_dir, "bin")
    os.mkdir(bin_dir, 0o755)
    os.symlink(ECHO, os.path.join(bin_dir, "pipevisor-echo"))
    env = {"PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    with running_daemon(sock_dir, None, env=env) as d:
        # no --socket: $PIPEVISOR_SOCKET (set by the helper) is used
        with Client(d.socket) as client:
            assert set(pids(client)) == {"echo"}
            assert client.call("echo", "echo", {"text": "hi"}) is not None
            info = client.status()["daemon"]
            assert info["config"] is None and info["socket"] == d.socket
            # load: a path (named after the file), a name discovered since the start
            os.symlink(ECHO, os.path.join(sock_dir, "pipevisor-other"))
            assert client.load(os.path.join(sock_dir, "pipevisor-other"), wait=20)[
                "name"] == "other"
            os.symlink(ECHO, os.path.join(bin_dir, "pipevisor-late"))
            assert client.load("late", wait=20)["state"] == "ready"
            with pytest.raises(ControlError, match="'nothing' is neither configured"):
                client.load("nothing")
        assert d.stop() == 0
        assert "[echo]: pipevisor-echo" in d.stderr()  # plugin stderr, tagged
    assert os.path.isdir(os.path.join(sock_dir, "pipevisor"))  # state dir under XDG_RUNTIME_DIR


def test_a_second_daemon_on_the_same_socket_exits_1(sock_dir: str) -> None:
    with running_daemon(sock_dir, BASE + fake_table("alpha")) as d:
        second = subprocess.run(
            [sys.executable, "-m", "pipevisor.supervisor", "run", "--config", d.config,
             "--socket", d.socket], capture_output=True, text=True, timeout=60, check=False,
            cwd=ROOT, env={**os.environ, "NOTIFY_SOCKET": ""})
        assert second.returncode == 1, second.stderr
        assert "cannot start" in second.stderr
        assert d.socket in second.stderr and f"pid {d.proc.pid}" in second.stderr
        with Client(d.socket) as client:
            assert client.call("alpha", "echo", {"n": 1}) == {"n": 1}
