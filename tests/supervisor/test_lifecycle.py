"""Plugins that crash, hang, start slowly, mismatch, or are stopped, started and unloaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    HealthPolicy,
    PluginCrashed,
    PluginSpec,
    PluginState,
    PluginUnavailable,
    RestartMode,
    RestartPolicy,
    StopPolicy,
    Supervisor,
    SupervisorConfig,
)
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio
HELPERS = Path(__file__).parent / "helpers"


async def test_crash_mid_call_fails_every_call_in_flight_and_restarts() -> None:
    """[M-9.4a]: every call in flight fails with -31000 PLUGIN_CRASHED, then a restart."""
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        errors: list[BaseException] = []

        async def sleeper() -> None:
            try:
                await sup.call("fake", "sleep", {"seconds": 30}, timeout=30)
            except PluginCrashed as exc:
                errors.append(exc)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(sleeper)
            with anyio.fail_after(5):
                while sup.runner("fake").status()["in_flight"] < 5:
                    await anyio.sleep(0.01)
            with pytest.raises(PluginCrashed) as info:
                await sup.call("fake", "crash", {"code": 7})
        assert time.monotonic() - started < 10  # not a timeout: the crash settled them
        assert len(errors) == 5
        err = info.value
        assert err.code == ErrorCode.PLUGIN_CRASHED
        assert err.data["returncode"] == 7
        assert "crashing on purpose" in err.data["stderr"][-1]
        assert "exited with code 7" in str(err)
        # calls made while it restarts wait for it
        assert await sup.call("fake", "echo", ["again"], timeout=10) == ["again"]
        assert sup.runner("fake").tracker.total_restarts == 1


async def test_crash_loop_reaches_the_intensity_limit_and_fails() -> None:
    spec = fake_spec("loop", "--crash-at-start", "4",
                     restart=RestartPolicy(first_backoff=0.01, max_delay=0.05, max_restarts=3,
                                           within_seconds=30))
    async with Supervisor([spec]) as sup:
        runner = sup.runner("loop")
        await runner.wait_state({PluginState.FAILED}, 20)
        assert runner.tracker.total_restarts == 3
        assert "giving up" in (runner.reason or "")
        assert "exited with code 4" in (runner.reason or "")
        with pytest.raises(PluginUnavailable) as info:
            await sup.call("loop", "echo")
        assert info.value.code == ErrorCode.PLUGIN_STOPPED
        assert "failed" in str(info.value)
        # it stays failed until someone starts it again
        assert runner.state is PluginState.FAILED
        assert runner.last_exit is not None and runner.last_exit["returncode"] == 4


async def test_restart_policy_never() -> None:
    spec = fake_spec(restart=RestartPolicy(mode=RestartMode.NEVER))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        with pytest.raises(PluginCrashed):
            await sup.call("fake", "crash", {"code": 1})
        await sup.runner("fake").wait_state({PluginState.STOPPED}, 10)


async def test_slow_start_calls_wait_for_ready() -> None:
    async with Supervisor([fake_spec("slow", "--slow-start", "0.5")]) as sup:
        assert await sup.call("slow", "echo", ["hi"], timeout=20) == ["hi"]


async def test_stop_while_the_handshake_is_pending_does_not_fight_the_stop() -> None:
    """The handshake answer arriving during the stop must not move stopping -> ready."""
    async with Supervisor([fake_spec("slow", "--slow-start", "0.5")]) as sup:
        runner = sup.runner("slow")
        await runner.wait_state({PluginState.HANDSHAKING}, 10)
        sup.stop("slow")
        # the plugin wakes up, answers the handshake, then sees stdin closed and exits
        assert await runner.wait_state({PluginState.STOPPED, PluginState.FAILED},
                                        10) is PluginState.STOPPED
        assert runner.last_exit is not None and runner.last_exit["returncode"] == 0
        sup.start("slow")
        assert await sup.call("slow", "echo", ["again"], timeout=20) == ["again"]


async def test_close_while_spawning_exits_cleanly() -> None:
    """Leaving the supervisor while an instance is being spawned stops it, no exception."""
    async with Supervisor([fake_spec("fresh")]) as sup:
        await sup.runner("fresh").wait_state({PluginState.STARTING}, 10)
    assert sup.status() == []


async def test_not_ready_in_time_gives_a_clear_error() -> None:
    async with Supervisor([fake_spec("slow", "--slow-start", "3")]) as sup:
        with pytest.raises(PluginUnavailable) as info:
            await sup.call("slow", "echo", timeout=0.3)
        assert info.value.code == ErrorCode.PLUGIN_NOT_READY


async def test_hung_plugin_is_detected_by_ping_and_restarted() -> None:
    spec = fake_spec(health=HealthPolicy(ping_interval=0.2, ping_timeout=0.5))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        await sup.call("fake", "hang")
        started = time.monotonic()
        with pytest.raises(Exception) as info:
            await sup.call("fake", "echo", [1], timeout=20)
        assert time.monotonic() - started < 10
        assert getattr(info.value, "code", None) == ErrorCode.TIMEOUT
        assert "liveness ping" in str(info.value)
        assert await sup.call("fake", "echo", [2], timeout=20) == [2]
        assert sup.runner("fake").instance == 2


async def test_protocol_version_without_overlap_fails_without_restart_loop() -> None:
    async with Supervisor([fake_spec("future", "--protocol", "2.0..3.1")]) as sup:
        runner = sup.runner("future")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert runner.tracker.total_restarts == 0
        assert "1.0" in (runner.reason or "") and "2.0..3.1" in (runner.reason or "")


async def test_missing_executable_fails_with_its_name() -> None:
    spec = PluginSpec("ghost", ("/nonexistent/pipevisor-ghost",))
    async with Supervisor([spec]) as sup:
        runner = sup.runner("ghost")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert "/nonexistent/pipevisor-ghost" in (runner.reason or "")
        assert runner.tracker.total_restarts == 0


async def test_plugin_exits_on_stdin_eof_during_graceful_stop() -> None:
    # No shutdown capability: the stop sequence closes stdin, the plugin exits 0 by itself.
    spec = fake_spec("eof", "--no-shutdown-cap")
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        runner = sup.runner("eof")
        runner.stop()
        await runner.wait_state({PluginState.STOPPED}, 10)
        assert runner.last_exit is not None
        assert runner.last_exit["returncode"] == 0


async def test_stubborn_plugin_is_terminated_then_killed() -> None:
    spec = fake_spec("stubborn", "--no-shutdown-cap", "--ignore-eof", "--ignore-sigterm",
                     stop=StopPolicy(shutdown_grace=0.2, eof_grace=0.2, term_grace=0.3))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        runner = sup.runner("stubborn")
        runner.stop()
        await runner.wait_state({PluginState.STOPPED}, 10)
        assert runner.last_exit is not None
        assert runner.last_exit["returncode"] == -signal.SIGKILL


async def test_graceful_stop_of_fifty_plugins_is_concurrent() -> None:
    # Each one ignores stdin EOF, so each needs eof_grace (1 s) before SIGTERM:
    # one after the other this would take 50 s; concurrently about 1 s.
    specs = [fake_spec(f"p{i}", "--no-shutdown-cap", "--ignore-eof",
                       stop=StopPolicy(shutdown_grace=1.0, eof_grace=1.0, term_grace=2.0))
             for i in range(50)]
    sup = Supervisor(specs)
    async with sup:
        await sup.wait_ready(timeout=120)
        assert all(s["state"] == "ready" for s in sup.status())
        started = time.monotonic()
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"stopping 50 plugins took {elapsed:.1f} s"


async def test_stop_start_restart_load_unload() -> None:
    async with Supervisor([fake_spec("a"), fake_spec("b")]) as sup:
        await sup.wait_ready(timeout=20)
        sup.stop("a")
        await sup.runner("a").wait_state({PluginState.STOPPED}, 10)
        assert await sup.call("b", "echo", [1]) == [1]  # untouched
        sup.start("a")
        assert await sup.call("a", "echo", [2], timeout=10) == [2]
        before = sup.runner("a").status()["pid"]
        sup.restart("a")
        assert await sup.call("a", "echo", [3], timeout=10) == [3]
        assert sup.runner("a").status()["pid"] != before
        await sup.load(fake_spec("c"), wait=10)
        assert await sup.call("c", "echo", [4]) == [4]
        await sup.unload("c")
        assert "c" not in sup.runners
        assert sup.runner("b").instance == 1


async def test_events_follow_state_changes() -> None:
    sup = Supervisor([])
    async with sup, sup.subscribe() as events:
        await sup.load(fake_spec(), wait=10)
        seen: list[tuple[str, str]] = []
        with anyio.fail_after(5):
            while ("handshaking", "ready") not in seen:
                ev = await events.next()
                if ev.kind == "state":
                    seen.append((ev.detail["from"], ev.detail["to"]))
        assert seen == [("stopped", "starting"), ("starting", "handshaking"),
                        ("handshaking", "ready")]


def test_nothing_survives_a_sigkilled_supervisor(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, str(HELPERS / "run_supervisor.py"), str(pidfile)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), line
        shim_pid = int(line.split()[1])
        # the pid file holds pids as seen inside the plugin's namespace; find the
        # real ones as the supervisor's descendants
        tree = psutil.Process(proc.pid).children(recursive=True)
        # outer shim, inner init, the plugin, its child and the setsid grandchild
        # (reparented inside the namespace, or to the shim acting as subreaper)
        assert len(tree) >= 5, tree
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while True:
            alive = [p for p in tree if _running(p)]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert not alive, f"survived the supervisor: {alive}"
        assert not _running_pid(shim_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _running_pid(pid: int) -> bool:
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


async def test_session_containment_supervisor_exits_promptly() -> None:
    # Without a pid namespace the supervisor is a subreaper with a reaper task; that
    # task must end with the last plugin, not hold the exit until the safety deadline
    # (the stop budget here is 2 + 2 + 2 + 5 = 11 s).
    sup = Supervisor(SupervisorConfig(plugins=[fake_spec()], containment="session"))
    async with sup:
        assert await sup.call("fake", "echo", [1], timeout=10) == [1]
        started = time.monotonic()
    assert time.monotonic() - started < 5
