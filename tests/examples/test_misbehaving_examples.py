"""The misbehaving examples under a real Supervisor: each misbehaves as its docstring says.

Every test runs the plugin as a real process and waits on supervisor events or on the
process tree's own counters, each with a deadline; none takes more than a few seconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    CallTimeout,
    HealthPolicy,
    PluginCrashed,
    PluginSpec,
    PluginState,
    RestartPolicy,
    StopPolicy,
    Supervisor,
    SupervisorConfig,
    SupervisorEvent,
)
from pipevisor.supervisor.engine.events import Subscription
from pipevisor.supervisor.engine.limits import Limit, Limits

pytestmark = pytest.mark.anyio

MISBEHAVING = Path(__file__).resolve().parents[2] / "examples" / "misbehaving"
DEADLINE = 10.0
CPU_DEADLINE = 30.0  # CPU time adds up slowly when other tests load both cores
NAMES = ("crashy", "leaky", "spinner", "hangs", "garbage")


def spec(name: str, *args: str, grace: float = 2.0) -> PluginSpec:
    return PluginSpec(name, (str(MISBEHAVING / f"pipevisor-{name}"), *args), autostart=False,
                      restart=RestartPolicy(jitter=0.0, first_backoff=0.05),
                      stop=StopPolicy(shutdown_grace=grace, eof_grace=grace, term_grace=grace),
                      health=HealthPolicy(handshake_timeout=DEADLINE, ping_interval=60.0))


async def started(sup: Supervisor, name: str) -> None:
    sup.start(name)
    await sup.wait_ready([name], timeout=DEADLINE)


async def next_event(sub: Subscription, kind: str, **match: Any) -> SupervisorEvent:
    with anyio.fail_after(DEADLINE):
        while True:
            event = await sub.next()
            if event.kind == kind and all(event.detail.get(k) == v for k, v in match.items()):
                return event


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss(pid: int) -> int:
    return sum(p.memory_info().rss for p in tree(pid))


def cpu_seconds(pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in tree(pid))


def pid_of(sup: Supervisor, name: str) -> int:
    pid = sup.runner(name).status()["pid"]
    assert isinstance(pid, int)
    return pid


def test_misbehaving_examples_are_executable_scripts() -> None:
    for name in NAMES:
        path = MISBEHAVING / f"pipevisor-{name}"
        assert path.stat().st_mode & 0o111, path
        assert path.read_text().startswith("#!/usr/bin/env python3\n"), path


async def test_crashy_crashes_on_a_call_and_is_restarted() -> None:
    async with Supervisor([spec("crashy", "--crash-after", "0")]) as sup, \
            sup.subscribe() as sub:
        await started(sup, "crashy")
        assert await sup.call("crashy", "work", {}, timeout=DEADLINE) == {
            "done": True, "instance": 1}
        with pytest.raises(PluginCrashed) as crashed:
            await sup.call("crashy", "crash", {}, timeout=DEADLINE)
        assert crashed.value.code == ErrorCode.PLUGIN_CRASHED
        await next_event(sub, "exit", returncode=3)
        await next_event(sub, "restart")
        await sup.wait_ready(["crashy"], timeout=DEADLINE)
        assert await sup.call("crashy", "work", {}, timeout=DEADLINE) == {
            "done": True, "instance": 2}
        assert sup.runner("crashy").status()["restarts"] == 1
        sup.stop("crashy")
        await sup.runner("crashy").wait_state({PluginState.STOPPED}, DEADLINE)
        assert sup.runner("crashy").status()["last_exit"]["returncode"] == 0


async def test_crashy_also_crashes_by_itself() -> None:
    async with Supervisor([spec("crashy", "--crash-after", "0.2")]) as sup, \
            sup.subscribe() as sub:
        await started(sup, "crashy")
        exit_event = await next_event(sub, "exit", returncode=4)
        assert "crashing by itself" in "\n".join(exit_event.detail["stderr"])
        await next_event(sub, "restart")
        await next_event(sub, "state", to="ready")
        # sup.stop() could race the next spontaneous crash; closing the Supervisor stops it


async def test_garbage_lines_are_counted_as_faults_and_calls_still_work() -> None:
    async with Supervisor([spec("garbage")]) as sup, sup.subscribe() as sub:
        await started(sup, "garbage")
        for text in ("a", "b", "c"):
            assert await sup.call("garbage", "echo", {"text": text}, timeout=DEADLINE) == {
                "text": text}
        # two stray lines around each of the three answers
        faults = [await next_event(sub, "fault") for _ in range(6)]
        assert faults[-1].detail["count"] == 6
        assert any(f.detail["raw"].startswith("DEBUG answering") for f in faults)
        status = sup.runner("garbage").status()
        assert status["state"] == "ready"  # faults alone are not fatal (on_protocol_error=log)
        assert status["restarts"] == 0
        sup.stop("garbage")
        await sup.runner("garbage").wait_state({PluginState.STOPPED}, DEADLINE)
        assert sup.runner("garbage").status()["last_exit"]["returncode"] == 0


async def test_hangs_never_answers_and_needs_sigkill_after_every_grace() -> None:
    async with Supervisor([spec("hangs", grace=0.3)]) as sup:
        await started(sup, "hangs")
        with pytest.raises(CallTimeout):
            await sup.call("hangs", "echo", {"text": "hello?"}, timeout=0.3)
        sup.stop("hangs")
        await sup.runner("hangs").wait_state({PluginState.STOPPED}, DEADLINE)
        last_exit = sup.runner("hangs").status()["last_exit"]
        assert last_exit["returncode"] == -9, last_exit
        # it saw every step of the stop sequence and ignored each one
        said = "\n".join(sup.runner("hangs").stderr.last(20))
        assert "pipevisor/shutdown" in said and "not answering" in said
        assert "stdin closed: staying anyway" in said
        assert "SIGTERM received: ignored" in said


async def test_leaky_rss_grows_while_idle() -> None:
    async with Supervisor([spec("leaky", "--rate", "20")]) as sup:
        await started(sup, "leaky")
        pid = pid_of(sup, "leaky")
        before = rss(pid)
        with anyio.fail_after(DEADLINE):
            while rss(pid) < before + 20 * 1024 * 1024:  # 20 MiB more, idle all along
                await anyio.sleep(0.05)
        leaked = await sup.call("leaky", "leaked", {}, timeout=DEADLINE)
        assert leaked["bytes"] >= 20 * 1024 * 1024
        assert await sup.call("leaky", "echo", {"text": "x"}, timeout=DEADLINE) == {"text": "x"}
        sup.stop("leaky")
        await sup.runner("leaky").wait_state({PluginState.STOPPED}, DEADLINE)
        assert sup.runner("leaky").status()["last_exit"]["returncode"] == 0


async def test_spinner_burns_cpu_while_idle_and_still_answers() -> None:
    async with Supervisor([spec("spinner")]) as sup:
        await started(sup, "spinner")
        pid = pid_of(sup, "spinner")
        start = cpu_seconds(pid)
        # an idle well-behaved plugin uses next to no CPU; this one a whole core. On a
        # loaded machine it gets less than that, so wait for the CPU time to add up
        # (bounded by a deadline) rather than measure over a fixed window.
        with anyio.fail_after(CPU_DEADLINE):
            while cpu_seconds(pid) < start + 1.0:
                await anyio.sleep(0.05)

        async def loops() -> int:
            n = (await sup.call("spinner", "spins", {}, timeout=DEADLINE))["loops"]
            assert isinstance(n, int)
            return n

        first = await loops()
        assert first > 0
        assert await sup.call("spinner", "echo", {"text": "x"}, timeout=DEADLINE) == {
            "text": "x"}
        # the spinning thread goes on between answers; it may not have been scheduled
        # between two calls in a row, so wait for the counter to move, with a deadline
        with anyio.fail_after(CPU_DEADLINE):
            while await loops() <= first:
                await anyio.sleep(0.05)
        sup.stop("spinner")
        await sup.runner("spinner").wait_state({PluginState.STOPPED}, DEADLINE)
        assert sup.runner("spinner").status()["last_exit"]["returncode"] == 0


async def test_hangs_misses_its_pings_and_is_killed_and_restarted() -> None:
    hung = PluginSpec("hangs", (str(MISBEHAVING / "pipevisor-hangs"),), autostart=False,
                      restart=RestartPolicy(jitter=0.0),
                      stop=StopPolicy(shutdown_grace=0.3, eof_grace=0.3, term_grace=0.3),
                      health=HealthPolicy(handshake_timeout=DEADLINE, ping_interval=0.1,
                                          ping_timeout=0.3))
    async with Supervisor([hung]) as sup, sup.subscribe() as sub:
        await started(sup, "hangs")
        restart = await next_event(sub, "restart")
        assert "liveness ping" in restart.detail["after"]
        await next_event(sub, "state", to="ready")
        status = sup.runner("hangs").status()
        assert status["instance"] >= 2
        # a hung plugin's stop starts at SIGTERM, which it ignores: SIGKILL it is
        assert status["last_exit"]["returncode"] == -9, status["last_exit"]


async def test_a_memory_limit_catches_leaky() -> None:
    leaky = dataclasses.replace(
        spec("leaky", "--rate", "40"),
        limits=Limits(memory=Limit(max=48 * 1024 * 1024, action="restart")))
    config = SupervisorConfig(plugins=[leaky], sample_interval=0.1)
    async with Supervisor(config) as sup, sup.subscribe() as sub:
        await started(sup, "leaky")
        breach = await next_event(sub, "limit", limit="memory")
        assert breach.detail["value"] > 48 * 1024 * 1024
        await next_event(sub, "restart")
        await next_event(sub, "state", to="ready")
        assert sup.runner("leaky").status()["instance"] >= 2


async def test_a_cpu_limit_catches_spinner() -> None:
    spinner = dataclasses.replace(
        spec("spinner"), limits=Limits(cpu=Limit(max=30, action="stop"), cpu_window=0.5))
    config = SupervisorConfig(plugins=[spinner], sample_interval=0.1)
    async with Supervisor(config) as sup, sup.subscribe() as sub:
        await started(sup, "spinner")
        breach = await next_event(sub, "limit", limit="cpu")
        assert breach.detail["value"] > 30
        await sup.runner("spinner").wait_state({PluginState.STOPPED, PluginState.FAILED},
                                               DEADLINE)
