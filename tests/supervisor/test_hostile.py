"""Hostile plugins (issue 13): whatever one plugin does, the supervisor and its neighbours
survive it, every call ends exactly once, and the host's memory stays bounded.

Each test runs real plugin processes (tests/plugins/hostile.py and friends) next to a
well-behaved neighbour, and checks the invariants after the attack.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.supervisor import (
    CallError,
    CallPolicy,
    HealthPolicy,
    PluginSpec,
    PluginState,
    RestartPolicy,
    StopPolicy,
    Supervisor,
    SupervisorConfig,
)

pytestmark = pytest.mark.anyio

HOSTILE = str(Path(__file__).resolve().parent.parent / "plugins" / "hostile.py")


def hostile(name: str, *attack: str, **overrides: Any) -> PluginSpec:
    spec = PluginSpec(
        name, (sys.executable, HOSTILE, *attack),
        restart=RestartPolicy(first_backoff=0.05, max_delay=0.5, max_restarts=5,
                              within_seconds=30),
        stop=StopPolicy(shutdown_grace=1.0, eof_grace=1.0, term_grace=1.0),
        calls=CallPolicy(timeout=10.0),
        health=HealthPolicy(handshake_timeout=10.0, ping_interval=0),
    )
    return replace(spec, **overrides)


NEIGHBOUR = hostile("neighbour", "serve")


@asynccontextmanager
async def supervising(*specs: PluginSpec, **config: Any) -> AsyncIterator[Supervisor]:
    async with Supervisor(SupervisorConfig(plugins=(NEIGHBOUR, *specs), **config)) as sup:
        await sup.wait_ready(["neighbour"], timeout=20)
        yield sup
        # the invariant every test ends on: the host and a neighbour still work
        assert await sup.call("neighbour", "echo", {"text": "still here"}, timeout=5) == {
            "text": "still here"}


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


# ------------------------------------------------------------------ item 1: exit at once


async def test_a_plugin_that_exits_at_once_never_takes_the_supervisor_down(
        tmp_path: Path) -> None:
    """Hundreds of instant exits with a tiny backoff: the process is often reaped before
    the spawn is recorded (psutil.NoSuchProcess); that must stay this plugin's problem."""
    script = tmp_path / "exit-at-once"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    quick = hostile("quitter", command=(str(script),), restart=RestartPolicy(
        first_backoff=0.001, max_delay=0.001, max_restarts=100_000, within_seconds=60))
    async with supervising(quick, state_dir=str(tmp_path / "state")) as sup:
        runner = sup.runner("quitter")
        await wait_for(lambda: runner.tracker.total_restarts >= 300, 60, "300 restarts")
        assert runner.state is not PluginState.FAILED
    record = tmp_path / "state" / "children.json"
    assert not record.exists() or json.loads(record.read_text())["trees"] == {}


# ------------------------------------------------------------ item 2: one bad cancel line


@pytest.mark.parametrize("bad_id", ["[1]", '{"a":1}', "[[]]"])
async def test_a_cancel_with_an_unhashable_id_is_a_fault_not_a_crash(
        tmp_path: Path, bad_id: str) -> None:
    lines = tmp_path / "lines"
    cancel = '{"jsonrpc":"2.0","method":"pipevisor/cancel","params":{"id":BAD}}\n'
    lines.write_text(cancel.replace("BAD", bad_id))
    async with supervising(hostile("liar", "lines", str(lines))) as sup:
        await sup.wait_ready(["liar"], timeout=20)
        assert await sup.call("liar", "echo", {"text": "x"}, timeout=5) == {"text": "x"}
        assert sup.runner("liar").instance == 1



# ------------------------------------------------- one fault boundary per plugin


def _inject_once(monkeypatch: pytest.MonkeyPatch, owner: Any, attr: str,
                 applies: Any, armed: list[bool]) -> list[str]:
    """Make ``owner.attr`` raise once, the first time ``applies(self, *args)`` holds
    after ``armed`` became true."""
    original = getattr(owner, attr)
    fired: list[str] = []

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if armed[0] and not fired and applies(self, *args):
            fired.append(attr)
            raise RuntimeError(f"injected fault in {attr}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, attr, wrapper)
    return fired


def _victim(self: Any, *args: Any) -> bool:
    return getattr(self, "name", None) == "victim" or (
        getattr(getattr(self, "spec", None), "name", None) == "victim")


def _steps() -> dict[str, tuple[Any, str, Any, str]]:
    from pipevisor.supervisor.engine.connection import Connection
    from pipevisor.supervisor.engine.events import EventHub
    from pipevisor.supervisor.engine.method_calls import MethodCalls
    from pipevisor.supervisor.engine.plugin_output import PluginOutput
    from pipevisor.supervisor.engine.sampler import Sampler
    from pipevisor.supervisor.proc import containment as _platform

    return {
        # name: (owner, attribute, applies, what triggers it)
        "spawn-record": (_platform.LeftoverRecord, "record", lambda self, *a: True, "load"),
        "handshake": (MethodCalls, "negotiate", _victim, "load"),
        "reading": (Connection, "_settle", _victim, "call"),
        "calling": (Connection, "call", _victim, "call"),
        "notification": (PluginOutput, "on_notification", _victim, "call"),
        "stderr": (PluginOutput, "on_stderr", _victim, "call"),
        "sampling": (Sampler, "_enforce", lambda self, runner, *a: runner.spec.name == "victim",
                     "load"),
        "event-in-instance": (EventHub, "publish", lambda self, e: (
            e.plugin == "victim" and e.kind == "state" and e.detail.get("to") == "ready"),
            "load"),
        "event-between-instances": (EventHub, "publish", lambda self, e: (
            e.plugin == "victim" and e.kind == "restart"), "kill"),
    }


@pytest.mark.parametrize("step", list(_steps()))
async def test_an_exception_while_serving_one_plugin_stays_in_its_scope(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: str) -> None:
    from pipevisor.supervisor.engine.limits import Limit, LimitAction, Limits

    owner, attr, applies, trigger = _steps()[step]
    victim = hostile("victim", "serve",
                     limits=Limits(memory=Limit(2**30, LimitAction.WARN)))
    async with supervising(state_dir=str(tmp_path / "state"), sample_interval=0.05) as sup:
        armed = [trigger == "load"]
        # patched before the load: callbacks are bound when an instance starts
        fired = _inject_once(monkeypatch, owner, attr, applies, armed)
        await sup.load(victim, wait=None if armed[0] else 20)
        armed[0] = True
        runner = sup.runner("victim")
        if trigger == "call":
            try:  # whatever breaks, the caller gets a result or a CallError, never more
                await sup.call("victim", "echo", {"chatty": True}, timeout=5)
            except CallError:
                pass
        elif trigger == "kill":
            os.kill(runner.process.pid, 9)  # type: ignore[union-attr]
        await wait_for(lambda: bool(fired) and runner.internal_faults >= 1, 20,
                       "the injected fault")
        assert sup.runner("neighbour").internal_faults == 0
        # the faulty instance ends (a new one follows) or, between instances, it is failed
        await wait_for(lambda: runner.instance >= 2 or runner.state is PluginState.FAILED,
                       20, "the end of the faulty instance")
        if runner.state is PluginState.FAILED:
            sup.restart("victim")  # the outer boundary marks it failed; start brings it back
        await wait_for(lambda: runner.instance >= 2 and runner.state is PluginState.READY,
                       20, "a new instance")
        assert await sup.call("victim", "echo", {"text": "back"}, timeout=5) == {"text": "back"}


# ------------------------------------------ item 5: floods hold no memory in the host


def _rss() -> int:
    import psutil
    return int(psutil.Process().memory_info().rss)


async def _neighbour_latency(sup: Supervisor, calls: int = 50) -> float:
    """The median seconds of a neighbour's echo under the attack."""
    times = []
    for _ in range(calls):
        started = anyio.current_time()
        await sup.call("neighbour", "echo", {"text": "x"}, timeout=5)
        times.append(anyio.current_time() - started)
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("attack", ["flood-requests", "flood-invalid"])
async def test_a_plugin_that_floods_and_never_reads_holds_no_memory(attack: str) -> None:
    """It writes requests (or invalid lines, each owed an error) as fast as it can and
    never reads its stdin: the host stops reading it once what it owes is queued, so
    its memory stays flat, calls to it time out, and the neighbour is unaffected."""
    async with supervising(hostile("flood", attack)) as sup:
        await sup.wait_ready(["flood"], timeout=20)
        before = _rss()
        with anyio.move_on_after(3):
            while True:
                await _neighbour_latency(sup, 10)
        grown = _rss() - before
        assert grown < 32 * 2**20, f"the host grew {grown >> 20} MiB in 3 s under {attack}"
        assert await _neighbour_latency(sup) < 0.05
        with pytest.raises(CallError) as caught:
            await sup.call("flood", "echo", {"text": "x"}, timeout=0.5)
        assert caught.value.code == -31002  # timeout: it reads nothing


async def test_a_host_call_flood_is_answered_queue_full_beyond_the_bound() -> None:
    """1,000 host calls at once: 64 run, 256 wait, the rest are answered QUEUE_FULL by
    the reader at once (no task each); the handler never runs more than 64 at a time."""
    running = peak = calls = 0
    release = anyio.Event()

    async with Supervisor(SupervisorConfig(plugins=(NEIGHBOUR, hostile("asker", "host-flood",
                                                                       "1000")))) as sup:
        @sup.host_method("host.slow")
        async def slow() -> dict[str, int]:
            nonlocal running, peak, calls
            running += 1
            calls += 1
            peak = max(peak, running)
            try:
                await release.wait()
            finally:
                running -= 1
            return {}

        await sup.wait_ready(timeout=20)
        runner = sup.runner("asker")
        await wait_for(lambda: runner.conn is not None
                       and runner.conn.host_calls_refused >= 1000 - 320, 20, "refusals")
        assert runner.conn is not None and runner.conn.host_calls_refused == 1000 - 320
        release.set()
        await wait_for(lambda: calls == 320 and running == 0, 20, "the admitted calls")
        assert peak == 64
        assert await sup.call("asker", "echo", {"text": "x"}, timeout=5) == {"text": "x"}


class _Counter:
    """Counts what reaches the log from one plugin (records and bytes)."""

    def __init__(self, name: str) -> None:
        import logging
        self.records = 0
        self.bytes = 0
        self.notes: list[str] = []
        counter = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = record.getMessage()
                counter.records += 1
                counter.bytes += len(text)
                if "not logged" in text:
                    counter.notes.append(text)

        self.handler = Handler()
        self.logger = logging.getLogger(f"pipevisor.plugin.{name}")

    def __enter__(self) -> _Counter:
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)


@pytest.mark.parametrize("attack", ["stderr-nonl", "log-flood"])
async def test_a_plugin_cannot_flood_the_log_or_the_tail(attack: str) -> None:
    """stderr without newlines (cut into 64 KiB lines) or pipevisor/log as fast as it
    can: the log gets at most the budget (200 lines and 128 KiB per second, one
    second's burst) plus a 'not logged' note, the tail stays within its bytes."""
    started = anyio.current_time()
    with _Counter("noisy") as counted:
        async with supervising(hostile("noisy", attack)) as sup:
            await sup.wait_ready(["noisy"], timeout=20)
            runner = sup.runner("noisy")
            before = _rss()
            await wait_for(lambda: runner.stderr_suppressed > 1000, 20, "the flood")
            with anyio.move_on_after(2):
                while True:
                    await _neighbour_latency(sup, 10)
            grown = _rss() - before
            assert await _neighbour_latency(sup) < 0.05
    seconds = anyio.current_time() - started  # it floods until it is stopped
    budget_bytes = 128 * 1024 * (seconds + 1) + 65 * 1024
    budget_lines = 200 * (seconds + 1) + 1
    assert counted.bytes <= budget_bytes + 200 * len(counted.notes), (counted.bytes, seconds)
    assert counted.records <= budget_lines + len(counted.notes) + 1
    assert counted.notes, "the suppressed lines must be reported"
    assert len(counted.notes) <= seconds + 1
    assert runner.stderr.bytes <= 1 << 20
    assert grown < 48 * 2**20, f"the host grew {grown >> 20} MiB under {attack}"


# ---------------------------------------------------- item 7: host methods' params


async def test_host_method_params_that_do_not_fit_are_invalid_params_not_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    from tests.supervisor.fake import fake_spec

    async with Supervisor([fake_spec("asker")]) as sup:
        @sup.host_method("add")
        async def add(a: int, b: int) -> int:
            return a + b

        @sup.host_method("broken")
        async def broken() -> None:
            raise RuntimeError("the host's own bug")

        await sup.wait_ready(timeout=20)

        async def ask(method: str, params: Any) -> Any:
            return await sup.call("asker", "call_host", {"method": method, "params": params},
                                  timeout=10)

        assert await ask("add", {"a": 2, "b": 3}) == 5
        assert await ask("add", [2, 3]) == 5
        for bad in ({"a": 1}, {"a": 1, "b": 2, "c": 3}, [1, 2, 3], None):
            answer = await ask("add", bad)
            assert answer["code"] == -32602, (bad, answer)
            assert "add" in answer["message"]
        caplog.clear()
        for _ in range(50):
            assert (await ask("broken", {}))["code"] == -32603
        tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("pipevisor")]
        assert 1 <= len(tracebacks) <= 10


# ------------------------------------------- item 9: the kernel backstop is a breach


async def test_an_allocation_stopped_by_the_kernel_backstop_is_a_memory_breach() -> None:
    """1 GiB at once under a 200 MiB limit: RLIMIT_DATA (400 MiB) fails the allocation
    long before a sample could see it; the plugin dies of MemoryError. That is
    reported as a memory breach (event, breach, counts), not as 'exited with code 1'."""
    from pipevisor.supervisor.engine.limits import Limit, LimitAction, Limits

    greedy = hostile("greedy", "alloc", str(2**30),
                     limits=Limits(memory=Limit(200 * 2**20, LimitAction.RESTART)))
    async with supervising(greedy, sample_interval=0.2) as sup:
        await sup.wait_ready(["greedy"], timeout=20)
        runner = sup.runner("greedy")
        async with sup.subscribe() as events:
            with pytest.raises(CallError) as caught:
                await sup.call("greedy", "alloc", {}, timeout=10)
            with anyio.fail_after(10):
                while (event := await events.next()).kind != "limit":
                    pass
        assert caught.value.code == -31004, caught.value.error  # OVER_LIMIT, not a crash
        assert event.plugin == "greedy" and event.detail["limit"] == "memory"
        assert "MemoryError" in event.detail["backstop"]
        assert runner.breach_counts["memory", "restart"] == 1
        assert runner.breaches[-1]["backstop"]
        await wait_for(lambda: runner.instance == 2 and runner.state is PluginState.READY,
                       20, "the restart the limit's action asks for")


def test_backstop_evidence_is_only_claimed_on_evidence() -> None:
    import signal

    from pipevisor.supervisor.engine.limits import Limit, Limits, MemoryBackstop, backstop_evidence

    limits = Limits(memory=Limit(100 * 2**20))
    oom = ["Traceback (most recent call last):", "MemoryError"]
    assert backstop_evidence(limits, 1, oom, None)
    assert backstop_evidence(limits, 1, ["ValueError: bad"], None) is None
    assert backstop_evidence(limits, 0, oom, None) is None  # a clean exit is not a breach
    assert backstop_evidence(Limits(), 1, oom, None) is None  # no memory limit
    assert backstop_evidence(Limits(memory=Limit(2**20), memory_backstop=MemoryBackstop.NONE),
                             1, oom, None) is None
    near = 95 * 2**20
    assert backstop_evidence(limits, -signal.SIGKILL, [], near)
    assert backstop_evidence(limits, -signal.SIGKILL, [], 10 * 2**20) is None
    assert backstop_evidence(limits, 3, [], near) is None
    assert backstop_evidence(limits, -signal.SIGABRT, ["fatal error: runtime: out of memory"],
                             None)
