"""The control CLI as a real subprocess against a real control server and real plugins:
output, --json, and the documented exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any

import anyio
import orjson
import pytest

from pipevisor.supervisor import RestartPolicy, Supervisor
from pipevisor.supervisor.cli.control import (
    EXIT_ERROR,
    EXIT_NO_DAEMON,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_UNKNOWN_PLUGIN,
    EXIT_USAGE,
)
from tests.daemon.control_helpers import FakeHooks, running, wait_for
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


async def cli(*args: str, socket: str | None = None, stdin: bytes | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k != "PIPEVISOR_SOCKET"}
    full_env.update(env or {})
    sock = ["--socket", socket] if socket else []
    with anyio.fail_after(60):
        return await anyio.run_process([sys.executable, "-m", "pipevisor.supervisor", *args, *sock],
                                       input=stdin, env=full_env, check=False)


def out_json(proc: subprocess.CompletedProcess[bytes]) -> Any:
    assert proc.returncode == 0, proc.stderr.decode()
    return orjson.loads(proc.stdout)


async def test_no_daemon_exit_3_names_the_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "none.sock")
    proc = await cli("status", socket=path)
    assert proc.returncode == EXIT_NO_DAEMON
    assert path in proc.stderr.decode() and proc.stdout == b""
    proc = await cli("call", "a", "echo", "--json", env={"PIPEVISOR_SOCKET": path})
    assert proc.returncode == EXIT_NO_DAEMON
    assert orjson.loads(proc.stderr)["error"]["socket"] == path


async def test_status_table_and_json(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("alpha"), fake_spec("beta")], path) as sup:
        data = out_json(await cli("status", "--json", env={"PIPEVISOR_SOCKET": path}))
        assert {p["name"] for p in data["plugins"]} == {"alpha", "beta"}
        assert data["daemon"]["pid"] == os.getpid()
        table = await cli("status", socket=path)
        assert table.returncode == 0
        text = table.stdout.decode()
        assert "NAME" in text and "MEMORY" in text and "CPU" in text
        row = next(line for line in text.splitlines() if line.startswith("alpha"))
        assert "ready" in row and str(sup.runner("alpha").status()["pid"]) in row


async def test_call_output_and_exit_codes(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path):
        assert out_json(await cli("call", "a", "echo", '{"k": [1, "x"]}', socket=path)) == {
            "k": [1, "x"]}
        assert out_json(await cli("call", "a", "echo", "-", socket=path,
                                  stdin=b'["from stdin"]')) == ["from stdin"]

        plugin_err = await cli("call", "a", "nope", socket=path)
        assert plugin_err.returncode == EXIT_ERROR and plugin_err.stdout == b""
        assert "no method nope" in plugin_err.stderr.decode()

        as_json = await cli("call", "a", "nope", "--json", socket=path)
        assert as_json.returncode == EXIT_ERROR
        assert orjson.loads(as_json.stderr)["error"]["code"] == -32601

        unknown = await cli("call", "ghost", "echo", socket=path)
        assert unknown.returncode == EXIT_UNKNOWN_PLUGIN
        assert "ghost" in unknown.stderr.decode()

        slow = await cli("call", "a", "sleep", '{"seconds": 30}', "--timeout", "0.3", socket=path)
        assert slow.returncode == EXIT_TIMEOUT

        bad = await cli("call", "a", "echo", "{not json", socket=path)
        assert bad.returncode == EXIT_USAGE and "not valid JSON" in bad.stderr.decode()
        scalar = await cli("call", "a", "echo", "3", socket=path)
        assert scalar.returncode == EXIT_USAGE

        assert (await cli("call", "a", "echo", "--notify", socket=path)).returncode == 0


async def test_lifecycle_commands(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    broken = fake_spec("broken", "--crash-at-start", "4", restart=RestartPolicy(
        first_backoff=0.01, max_delay=0.05, max_restarts=1, within_seconds=30))
    hooks = FakeHooks(loadable={"extra": fake_spec("extra"), "broken": broken})
    async with running([fake_spec("a")], path, hooks) as sup:
        stopped = await cli("stop", "a", socket=path)
        assert stopped.returncode == 0 and stopped.stdout.decode().strip() == "a: stopped"
        unavailable = await cli("call", "a", "echo", socket=path)
        assert unavailable.returncode == EXIT_UNAVAILABLE
        started = out_json(await cli("start", "a", "--json", socket=path))
        assert started["state"] == "ready"
        old_pid = started["pid"]
        restarted = out_json(await cli("restart", "a", "--json", socket=path))
        assert restarted["state"] == "ready" and restarted["pid"] != old_pid
        assert (await cli("restart", "ghost", socket=path)).returncode == EXIT_UNKNOWN_PLUGIN

        loaded = await cli("load", "extra", socket=path)
        assert loaded.returncode == 0 and loaded.stdout.decode().startswith("extra: ready")
        assert sup.runner("extra").state.value == "ready"
        refused = await cli("load", "nothing-like-it", socket=path)
        assert refused.returncode == EXIT_USAGE and "nothing-like-it" in refused.stderr.decode()
        assert (await cli("unload", "extra", socket=path)).returncode == 0
        assert "extra" not in sup.runners

        broken = await cli("load", "broken", "--json", socket=path)
        assert broken.returncode == EXIT_UNAVAILABLE
        assert orjson.loads(broken.stdout)["state"] == "failed"
        assert "exited with code 4" in orjson.loads(broken.stderr)["error"]["reason"]

        reloaded = out_json(await cli("reload", "--json", socket=path))
        assert reloaded == {"reloaded": True, "count": 1} and hooks.reloads == 1


async def test_logs_tail_and_follow(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup:
        await sup.call("a", "stderr_flood", {"lines": 200})
        await wait_for(lambda: len(sup.runner("a").stderr.last(300)) >= 200)
        tail = await cli("logs", "a", "-n", "3", socket=path)
        assert tail.returncode == 0
        shown = tail.stdout.decode().splitlines()
        # #19: a marker for the instance, then each line with the time it came
        assert shown[0] == "-- a instance 1 --"
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} " + "x" * 100, line)
                   for line in shown[1:]) and len(shown) == 4, shown

        follower = await anyio.open_process(
            [sys.executable, "-m", "pipevisor.supervisor", "logs", "a", "-n", "0", "--follow",
             "--json", "--socket", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # wait until the follower has subscribed, then make the plugin write
            await wait_for(lambda: len(sup.events._subscribers) == 1, 30)
            await sup.call("a", "stderr_flood", {"lines": 100})
            assert follower.stdout is not None
            got = b""
            with anyio.fail_after(30):
                while got.count(b"\n") < 100:
                    got += await follower.stdout.receive()
            first = orjson.loads(got.splitlines()[0])
            assert first["line"] == "x" * 100 and first["instance"] == 1
            assert abs(first["time"] - time.time()) < 60
        finally:
            follower.terminate()
            await follower.wait()
            await follower.aclose()


async def test_events_follow_json(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a"), fake_spec("b")], path) as sup:
        follower = await anyio.open_process(
            [sys.executable, "-m", "pipevisor.supervisor", "events", "--plugin", "a", "--kind",
             "state", "--json", "--socket", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            await wait_for(lambda: len(sup.events._subscribers) == 1, 30)
            sup.restart("b")  # filtered out
            sup.restart("a")
            assert follower.stdout is not None
            got = b""
            with anyio.fail_after(30):
                while b'"to":"ready"' not in got:
                    got += await follower.stdout.receive()
            events = [orjson.loads(line) for line in got.splitlines() if line.strip()]
            assert {e["plugin"] for e in events} == {"a"}
            assert {e["kind"] for e in events} == {"state"}
            assert [e["to"] for e in events][-1] == "ready"
        finally:
            follower.terminate()
            await follower.wait()
            await follower.aclose()
        await sup.wait_ready(timeout=20)


async def test_unknown_plugin_in_lifecycle_json_error(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with Supervisor([]) as sup, anyio.create_task_group() as tg:
        from pipevisor.supervisor.daemon.control import serve_control

        await tg.start(lambda task_status: serve_control(sup, path, FakeHooks(),
                                                         task_status=task_status))
        proc = await cli("stop", "ghost", "--json", socket=path)
        assert proc.returncode == EXIT_UNKNOWN_PLUGIN
        err = orjson.loads(proc.stderr)
        assert err["exit"] == EXIT_UNKNOWN_PLUGIN and err["error"]["data"]["plugin"] == "ghost"
        tg.cancel_scope.cancel()


async def test_lifecycle_and_status_take_several_names_globs_and_all(sock_dir: str) -> None:
    """#19: supervisorctl/systemctl parity: `restart 'al*' beta`, `stop all`,
    `status NAME...`; an unknown literal name does nothing at all (exit 4)."""
    path = os.path.join(sock_dir, "c.sock")
    specs = [fake_spec("alpha"), fake_spec("alfa"), fake_spec("beta"), fake_spec("mcp-x")]
    async with running(specs, path) as sup:
        await sup.wait_ready(timeout=20)
        pids = {n: sup.runner(n).status()["pid"] for n in ("alpha", "alfa", "beta", "mcp-x")}

        done = await cli("restart", "al*", "beta", socket=path)
        assert done.returncode == 0, done.stderr
        assert [line.split(":")[0] for line in done.stdout.decode().splitlines()] == [
            "alpha", "alfa", "beta"]
        after = {n: sup.runner(n).status()["pid"] for n in pids}
        assert all(after[n] != pids[n] for n in ("alpha", "alfa", "beta"))
        assert after["mcp-x"] == pids["mcp-x"]

        shown = out_json(await cli("status", "mcp-*", "beta", "--json", socket=path))
        assert [p["name"] for p in shown["plugins"]] == ["beta", "mcp-x"]

        bad = await cli("stop", "beta", "ghost", socket=path)
        assert bad.returncode == EXIT_UNKNOWN_PLUGIN and "'ghost'" in bad.stderr.decode()
        assert sup.runner("beta").status()["state"] == "ready"  # nothing was done

        stopped = out_json(await cli("stop", "all", "--json", socket=path))
        assert sorted(r["name"] for r in stopped) == ["alfa", "alpha", "beta", "mcp-x"]
        assert {r["state"] for r in stopped} == {"stopped"}


def test_last_exit_names_the_signal() -> None:
    from pipevisor.supervisor.cli.control import _last_exit

    assert _last_exit({"returncode": -15}) == "SIGTERM"
    assert _last_exit({"signal": 9}) == "SIGKILL"
    assert _last_exit({"returncode": 3}) == "code 3"


def test_the_status_table_fits_80_columns_and_says_why_a_plugin_failed() -> None:
    import time

    from pipevisor.supervisor.cli.control import render_status

    status = {"daemon": {"pid": 1, "started": time.time(), "socket": "/run/p.sock"},
              "plugins": [
                  {"name": "thumbnailer-01", "state": "ready", "pid": 4194303,
                   "uptime": 200_000, "restarts": 12, "last_exit": {"returncode": -9},
                   "memory_rss": 1_500_000_000, "cpu_percent": 199.9,
                   "plugin_version": "12.4.10-rc1"},
                  {"name": "crashy", "state": "failed", "restarts": 5,
                   "reason": "restarted 5 times within 60 s", "last_exit": {"returncode": 3},
                   "degradations": [{"method": "render", "reason": "major 2 unknown"}]}]}
    lines = render_status(status).splitlines()
    table = lines[1:4]
    assert max(len(line) for line in table) <= 80, table
    assert "SIGKILL" in table[1] and "12.4.10-rc" in table[1]
    assert "crashy failed: restarted 5 times within 60 s" in lines
    assert "crashy degraded: render: major 2 unknown" in lines


async def test_shell_completion_offers_the_daemons_plugin_names(sock_dir: str) -> None:
    """#19: completion worked for subcommands only; plugin names come from the daemon."""
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("alpha"), fake_spec("beta")], path):
        env = {**os.environ, "_PIPEVISOR_COMPLETE": "bash_complete", "PIPEVISOR_SOCKET": path,
               "COMP_WORDS": "pipevisor restart al", "COMP_CWORD": "2"}
        done = await anyio.run_process([sys.executable, "-m", "pipevisor.supervisor"],
                                       env=env, check=False)
        assert done.returncode == 0, done.stderr
        words = [line.split(",", 1)[1] for line in done.stdout.decode().splitlines()]
        assert words == ["alpha", "all"]


async def test_metrics_json_is_parsed_not_a_string(sock_dir: str) -> None:
    """#19: `metrics --json` was {"text": "..."}; it is the families and samples."""
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("alpha")], path) as sup:
        await sup.wait_ready(timeout=10)
        doc = out_json(await cli("metrics", "--json", socket=path))
        families = {f["name"]: f for f in doc["metrics"]}
        up = families["pipevisor_plugin_up"]
        assert up["type"] == "gauge" and up["help"]
        assert {"name": "pipevisor_plugin_up", "labels": {"plugin": "alpha"},
                "value": 1.0} in up["samples"]
        text = (await cli("metrics", socket=path)).stdout.decode()
        assert sum(len(f["samples"]) for f in doc["metrics"]) == sum(
            1 for line in text.splitlines() if line and not line.startswith("#"))


async def test_an_errors_explanation_shows_without_json(sock_dir: str) -> None:
    """#19: the data of an error (here the crash's exit code and stderr) was only in
    --json output."""
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path):
        crashed = await cli("call", "a", "crash", '{"code": 7}', socket=path)
        err = crashed.stderr.decode()
        assert crashed.returncode == EXIT_UNAVAILABLE, err
        assert "\n  details: " in err and '"returncode":7' in err
        assert '"origin"' not in err


def test_top_rates_and_sort_orders() -> None:
    """#19: top's rows: calls and errors per second from one frame to the next,
    sortable; a plugin's name is printed escaped."""
    from pipevisor.supervisor.cli.control import render_top

    def status(a_ok: int, a_err: int, b_ok: int) -> dict[str, Any]:
        return {"plugins": [
            {"name": "a", "state": "ready", "pid": 1, "cpu_percent": 50.0,
             "memory_rss": 1 << 20, "calls_ok": a_ok, "call_errors": a_err,
             "in_flight": 3, "queued": 1, "restarts": 0, "requested_restarts": 0},
            {"name": "b\x1b[2J", "state": "ready", "pid": 2, "cpu_percent": 1.0,
             "memory_rss": 8 << 20, "calls_ok": b_ok, "call_errors": 0,
             "in_flight": 0, "queued": 0, "restarts": 2, "requested_restarts": 1}]}

    previous: dict[str, tuple[int, int]] = {}
    first = render_top(status(10, 0, 0), previous, 2.0, "cpu").splitlines()
    assert first[0].split()[:8] == ["NAME", "STATE", "PID", "CPU", "MEMORY", "CALLS/S",
                                    "ERR/S", "INFL"]
    assert first[1].split()[5:7] == ["-", "-"]  # no rate before a second frame
    assert "\x1b" not in "\n".join(first) and first[2].startswith("b\\e[2J ")
    by_calls = render_top(status(30, 4, 100), previous, 2.0, "calls").splitlines()
    assert by_calls[1].startswith("b") and by_calls[1].split()[5] == "50.0"
    assert by_calls[2].split()[5:9] == ["10.0", "2.0", "3", "1"]
    assert render_top(status(30, 4, 100), previous, 2.0, "memory").splitlines()[1][0] == "b"
    assert render_top(status(30, 4, 100), previous, 2.0, "errors").splitlines()[1][0] == "a"
    assert render_top(status(30, 4, 100), previous, 2.0, "restarts").splitlines()[1][0] == "b"
    assert render_top(status(30, 4, 100), previous, 2.0, "name").splitlines()[1][0] == "a"


async def test_top_in_a_terminal_redraws_and_shows_calls_per_second(sock_dir: str) -> None:
    """#19: top in a real pseudo-terminal: the screen is cleared and redrawn each
    refresh, and a plugin being called shows its calls per second, sorted first."""
    import pty

    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("idle"), fake_spec("busy")], path) as sup:
        stop_calling = anyio.Event()

        async def keep_calling() -> None:
            while not stop_calling.is_set():
                await sup.call("busy", "echo", {"n": 1}, timeout=10)

        main, side = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != "PIPEVISOR_SOCKET"}
        env["COLUMNS"] = "100"
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_calling)
            proc = subprocess.Popen(  # noqa: ASYNC220 - a pty's fds; waited for in a thread
                [sys.executable, "-m", "pipevisor.supervisor", "top", "-d", "0.3", "-n", "3",
                 "--sort", "calls", "--socket", path],
                stdin=side, stdout=side, stderr=subprocess.PIPE, env=env, close_fds=True)
            os.close(side)
            screen = b""
            try:
                with anyio.fail_after(30):
                    while True:
                        try:
                            # abandoned on timeout: the finally kills top, which ends the read
                            chunk = await anyio.to_thread.run_sync(os.read, main, 65536,
                                                                   abandon_on_cancel=True)
                        except OSError:  # EIO: the terminal's other side closed
                            break
                        if not chunk:
                            break
                        screen += chunk
                    code = await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                os.close(main)
                stop_calling.set()
        assert code == 0, proc.stderr.read() if proc.stderr else b""
        text = screen.decode()
        assert text.count("\x1b[H\x1b[2J") == 3  # one redraw per refresh
        assert "\x1b[32mready\x1b[0m" in text  # states in colour on a terminal
        last = text.rsplit("\x1b[H\x1b[2J", 1)[1].splitlines()
        assert "by calls" in last[0]
        rows = [line.split() for line in last[2:] if line.strip()]
        assert rows[0][0] == "busy" and float(rows[0][5]) > 0, last
        assert rows[1][0] == "idle" and rows[1][5] == "0.0"


async def test_top_refreshes_a_table_sorted_by_cpu(sock_dir: str) -> None:
    """#19: `pipevisor top`: a live table; here two refreshes, not a terminal."""
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("alpha"), fake_spec("beta")], path):
        done = await cli("top", "-d", "0.2", "-n", "2", socket=path)
        assert done.returncode == 0, done.stderr
        text = done.stdout.decode()
        assert text.count("pipevisor top - ") == 2
        assert text.count("NAME ") == 2 and "alpha" in text and "beta" in text
        assert "\x1b" not in text  # no screen control when stdout is not a terminal


def test_status_colours_states_on_a_terminal_only_and_never_with_no_color(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """#19: colour on a TTY only, NO_COLOR honoured; the columns stay aligned."""
    import io

    from pipevisor.supervisor.cli.control import render_status, use_colour

    status = {"daemon": {"pid": 1, "socket": "s", "started": time.time()}, "plugins": [
        {"name": "a", "state": "ready", "pid": 10, "uptime": 5.0, "restarts": 0},
        {"name": "bb", "state": "failed", "pid": None, "uptime": None, "restarts": 3,
         "reason": "gave up"},
        {"name": "c", "state": "stopped", "pid": None, "uptime": None, "restarts": 0}]}
    plain = render_status(status)
    coloured = render_status(status, colour=True)
    assert "\x1b" not in plain
    assert "\x1b[32mready\x1b[0m" in coloured and "\x1b[1;31mfailed\x1b[0m" in coloured
    assert "stopped\x1b" not in coloured  # stopped stays plain
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain  # same layout

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "")
    assert not use_colour(Tty())
