"""Liveness pings with real plugins through the supervisor's shared ticker: sent from the
ticker, heard in the connection's reader, deadlines kept by the ticker (engine/health.py).

The plugin is perf/plugins/c_echo_plugin.c (answers ``pipevisor/ping`` with {} and any
unknown method with -32601): small enough to run 200 at once. "Stops answering" is a
SIGSTOP, as for a server that hangs. Each test watches the connection's
``request_nowait`` (and ``forget``), so it also fails if pings fall back to a task each.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorResponse, RequestId, Response
from pipevisor.supervisor import (
    HealthPolicy,
    PluginMode,
    PluginSpec,
    PluginState,
    RestartPolicy,
    Supervisor,
)
from pipevisor.supervisor.engine.config import ServerPolicy
from pipevisor.supervisor.engine.health import SLOT
from pipevisor.supervisor.engine.runner import PluginRunner
from pipevisor.supervisor.proc import tree
from tests.foreign.helpers import stopped

pytestmark = pytest.mark.anyio

SOURCE = Path(__file__).resolve().parents[2] / "perf" / "plugins" / "c_echo_plugin.c"
SCHEDULING = 0.25
"""Seconds a busy test machine may add to a deadline the ticker keeps."""


@pytest.fixture(scope="module")
def c_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C plugin, compiled once for this module into pytest's own temporary folder
    (a shared, predictably named cache could hold a binary another user left there)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler (cc/gcc) for perf/plugins/c_echo_plugin.c")
    out = tmp_path_factory.mktemp("c-plugin") / "c_echo_plugin"
    subprocess.run([cc, "-O2", "-o", str(out), str(SOURCE)], check=True, timeout=120)
    return out


def spec(binary: Path, name: str, interval: float, timeout: float, **kw: Any) -> PluginSpec:
    return PluginSpec(name, (str(binary),),
                      health=HealthPolicy(handshake_timeout=30, ping_interval=interval,
                                          ping_timeout=timeout),
                      restart=RestartPolicy(first_backoff=0.05, max_delay=0.5,
                                            max_restarts=5, within_seconds=30), **kw)


@dataclass
class Pings:
    """Every ping one connection sent without a task, and what came of it."""

    sent: list[float] = field(default_factory=list)
    answers: list[tuple[float, Response | ErrorResponse, bool]] = field(default_factory=list)
    forgotten: list[float] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def _note(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        with anyio.fail_after(timeout):
            while not done():
                await self.changed.wait()


def watch_pings(runner: PluginRunner) -> Pings:
    """Record the pings of ``runner``'s current connection (wrapping its
    ``request_nowait`` and ``forget`` on that one object)."""
    conn = runner.conn
    assert conn is not None
    pings = Pings()
    request_nowait, forget = conn.request_nowait, conn.forget

    def recording_request(method: str, params: Any,
                          done: Callable[[Response | ErrorResponse, bool], None]
                          ) -> RequestId | None:
        def heard(answer: Response | ErrorResponse, local: bool) -> None:
            pings.answers.append((time.monotonic(), answer, local))
            done(answer, local)
            pings._note()

        ident = request_nowait(method, params, heard)
        if ident is not None:
            pings.sent.append(time.monotonic())
            pings._note()
        return ident

    def recording_forget(ident: RequestId, reason: str) -> bool:
        pings.forgotten.append(time.monotonic())
        pings._note()
        return forget(ident, reason)

    conn.request_nowait = recording_request  # type: ignore[method-assign]
    conn.forget = recording_forget  # type: ignore[method-assign]
    return pings


async def next_instance_ready(runner: PluginRunner, instance: int) -> None:
    """Wait (polling, with a deadline) for an instance after ``instance`` to be ready."""
    with anyio.fail_after(30):
        while runner.instance <= instance or runner.state is not PluginState.READY:
            await anyio.sleep(0.01)


def plugin_pid(runner: PluginRunner) -> int:
    pid = runner.plugin_pid()
    assert pid is not None
    return pid


async def test_a_plugin_that_stops_answering_is_hung_within_the_timeout_and_a_slot(
        c_plugin: Path) -> None:
    # an interval of ten slots or more: pings and deadlines are batched by slot
    timeout = 0.5
    async with Supervisor([spec(c_plugin, "mute", 1.0, timeout)]) as sup, \
            sup.subscribe() as events:
        runner = sup.runner("mute")
        await runner.wait_state({PluginState.READY}, 30)
        pings = watch_pings(runner)
        await pings.until("a ping answered", lambda: bool(pings.answers), 10)
        answered = len(pings.sent)
        with stopped(plugin_pid(runner)):
            await pings.until("a ping to the stopped plugin",
                              lambda: len(pings.sent) > answered, 10)
            sent = pings.sent[-1]
            # the verdict: the ping given up on (its cancel sent), the instance ended
            await pings.until("the ping given up on", lambda: bool(pings.forgotten), 10)
            late = pings.forgotten[0] - sent
        with anyio.fail_after(10):
            async for ev in events:
                if ev.kind == "exit":
                    assert ev.detail["reason"] == (
                        f"no answer to a liveness ping within {timeout:g} s")
                    break
        assert timeout <= late <= timeout + SLOT + SCHEDULING, late
        await next_instance_ready(runner, 1)
        assert runner.instance == 2


async def test_a_plugin_answering_pings_with_an_error_stays_up(c_plugin: Path) -> None:
    # raw mode: the C plugin answers the unknown ping method -32601
    raw = spec(c_plugin, "grumpy", 0.2, 0.5, mode=PluginMode.RAW,
               server=ServerPolicy(ping_method="no/such/method"))
    async with Supervisor([raw]) as sup:
        runner = sup.runner("grumpy")
        await runner.wait_state({PluginState.READY}, 30)
        pings = watch_pings(runner)
        await pings.until("five error answers",
                          lambda: sum(isinstance(a, ErrorResponse) and not local
                                      for _, a, local in pings.answers) >= 5, 10)
        assert runner.state is PluginState.READY and runner.instance == 1
        assert not pings.forgotten


async def test_a_plugin_paused_by_the_cpu_throttle_is_not_called_hung(c_plugin: Path) -> None:
    timeout = 0.3
    async with Supervisor([spec(c_plugin, "held", 1.0, timeout)]) as sup:
        runner = sup.runner("held")
        await runner.wait_state({PluginState.READY}, 30)
        pings = watch_pings(runner)
        await pings.until("a ping answered", lambda: bool(pings.answers), 10)
        assert runner.process is not None
        pid = runner.process.pid
        # what the sampler does when it throttles (engine/sampler.py)
        tree.pause_tree(pid)
        runner.paused_since = time.monotonic()
        try:
            await pings.until("two pings given up on while paused",
                              lambda: len(pings.forgotten) >= 2, 10)
            assert runner.state is PluginState.READY and runner.instance == 1
        finally:
            tree.resume_tree(pid)
            runner.paused_since = None
            runner.resumed_at = time.monotonic()
        resumed = runner.resumed_at
        await pings.until("a ping answered after the pause",
                          lambda: any(t > resumed for t, _, _ in pings.answers), 10)
        assert runner.state is PluginState.READY and runner.instance == 1


async def test_a_plugin_dying_with_a_ping_in_flight_leaves_the_ticker_pinging(
        c_plugin: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Supervisor([spec(c_plugin, "dies", 0.2, 30.0),
                           spec(c_plugin, "lives", 0.2, 30.0)]) as sup, \
            sup.subscribe() as events:
        await sup.wait_ready(timeout=30)
        dies, lives = sup.runner("dies"), sup.runner("lives")
        first, other = watch_pings(dies), watch_pings(lives)
        await first.until("a ping answered", lambda: bool(first.answers), 10)
        answered = len(first.answers)
        pid = plugin_pid(dies)
        with stopped(pid):
            await first.until("a ping in flight", lambda: len(first.sent) > answered, 10)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            await first.until("the in-flight ping failed locally",
                              lambda: any(local for _, _, local in first.answers), 10)
        # the exit watcher reports the death and owns the ending: not a hang
        with anyio.fail_after(10):
            async for ev in events:
                if ev.plugin == "dies":
                    assert "liveness" not in str(ev.detail), ev.detail
                    if ev.kind == "state" and ev.detail["from"] == "ready":
                        assert "SIGKILL" in ev.detail["reason"], ev.detail
                        break
        await next_instance_ready(dies, 1)
        again = watch_pings(dies)  # its next instance is pinged by the same ticker
        await again.until("the new instance answers", lambda: len(again.answers) >= 2, 10)
        await other.until("its neighbour answers on",
                          lambda: sum(t > killed for t, _, _ in other.answers) >= 3, 10)
        assert dies.instance == 2 and dies.internal_faults == 0
        assert lives.state is PluginState.READY and lives.instance == 1
        assert sup.health.watched == 2
    assert "liveness ping failed" not in caplog.text
    assert "answer callback failed" not in caplog.text


@pytest.mark.slow
async def test_two_hundred_plugins_on_one_ticker_all_stay_ready(c_plugin: Path) -> None:
    n = 200
    specs = [spec(c_plugin, f"p{i}", 1.0, 2.0) for i in range(n)]
    async with Supervisor(specs) as sup:
        await sup.wait_ready(timeout=120)
        runners = [sup.runner(f"p{i}") for i in range(n)]
        pings = [watch_pings(r) for r in runners]
        with anyio.fail_after(30):
            for p in pings:
                await p.until("three answered pings", lambda p=p: len(p.answers) >= 3, 30)
        assert all(r.state is PluginState.READY and r.instance == 1 for r in runners)
        assert not any(p.forgotten for p in pings)
        assert sup.health.watched == n
        # batched: the pings of one round went out in few slots, not one wake each
        sends = sorted(t for p in pings for t in p.sent[:1])
        wakes = 1 + sum(1 for a, b in itertools.pairwise(sends) if b - a > SLOT / 2)
        assert wakes <= 1.0 / SLOT + 2, wakes
