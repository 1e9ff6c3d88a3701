"""The embedded supervisor against a stdlib-only echo plugin.

Every case drives ``pipevisor.supervisor.Supervisor`` in-process (the embedding API) and
talks to ``peers/stdlib_echo_plugin.py``, a blocking, single-threaded plugin
with no pipevisor imports, so the figures are the supervisor's cost on top of
the in-run floors in ``baselines.py``:

- ``embedded-seq-stdlib``: one call at a time, us/call vs ``raw-python-pipe``;
- ``embedded-pipelined-*``: N calls in flight, calls/s vs ``raw-python-pipe-pipelined``;
- ``restart-after-sigkill*``: SIGKILL the plugin tree, ms until a call answers again;
- ``python-startup``: ``python -c pass`` spawn+exit, ms, the part of a restart that
  is the interpreter rather than the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel

from perf.cases.baselines import TEXT
from perf.harness import Context, case, summarize
from pipevisor.supervisor import CallError, PluginSpec, RestartPolicy, Supervisor
from pipevisor.supervisor.engine.config import DEFAULT_INHERITED_ENV, SupervisorConfig

PEERS = Path(__file__).resolve().parent.parent / "peers"
STDLIB_ECHO = PEERS / "stdlib_echo_plugin.py"
PARAMS = {"text": TEXT}
CALL_TIMEOUT = 10.0
READY_TIMEOUT = 15.0

# No backoff at all, and an intensity limit that a benchmark never reaches:
# every kill is then followed by an immediate restart, as the first one is
# under the default policy.
NO_BACKOFF = RestartPolicy(
    max_restarts=1000, within_seconds=1.0, initial_delay=0.0, first_backoff=0.0, jitter=0.0
)


def _spec(name: str, restart: RestartPolicy | None = None) -> PluginSpec:
    if restart is None:
        return PluginSpec(name, (sys.executable, str(STDLIB_ECHO)))
    return PluginSpec(name, (sys.executable, str(STDLIB_ECHO)), restart=restart)


@dataclass
class Embedded:
    stack: AsyncExitStack
    sup: Supervisor
    names: list[str]
    phases_wanted: bool = False
    call_ns: list[int] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)


async def _start(specs: list[PluginSpec], *, phases: bool = False,
                 config: SupervisorConfig | None = None) -> Embedded:
    stack = AsyncExitStack()
    try:
        sup = await stack.enter_async_context(Supervisor(config if config else specs))
        await sup.wait_ready(timeout=READY_TIMEOUT)
        for spec in specs:
            # wait_ready also returns on ``failed``; a call proves the plugin serves.
            await sup.call(spec.name, "echo", PARAMS, timeout=CALL_TIMEOUT)
    except BaseException:
        # No shielding scope around it: the supervisor's task group must be
        # exited from the scope it was entered in, and it bounds its own stop.
        await stack.aclose()
        raise
    return Embedded(stack, sup, [s.name for s in specs], phases)


async def _stop(ctx: Context) -> None:
    st: Embedded | None = ctx.state
    if st is None:
        return
    await st.stack.aclose()
    if st.call_ns:
        us = sorted(ns / 1000 for ns in st.call_ns)
        stats = summarize(us)
        ctx.note("call_p50_us", round(stats["median"], 2))
        ctx.note("call_p90_us", round(stats["p90"], 2))
        ctx.note("call_p99_us", round(us[min(len(us) - 1, len(us) * 99 // 100)], 2))
    for phase, values in st.phases.items():
        if values:
            ctx.note(f"{phase}_ms_p50", round(summarize(values)["median"], 2))


# --------------------------------------------------------------------------- sequential


async def _setup_one(ctx: Context) -> Embedded:
    return await _start([_spec("echo")])


@case(
    "embedded-seq-stdlib",
    group="supervisor",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup_one,
    teardown=_stop,
)
async def embedded_seq_stdlib(ctx: Context) -> float:
    """Sequential sup.call() to one stdlib echo plugin: the embedded call latency."""
    st: Embedded = ctx.state
    call = st.sup.call
    n = ctx.pick(full=2000, quick=50)
    clock = time.perf_counter_ns
    timings = [0] * n
    start = prev = clock()
    for i in range(n):
        await call("echo", "echo", PARAMS, timeout=CALL_TIMEOUT)
        now = clock()
        timings[i] = now - prev
        prev = now
    if not ctx.warming_up:
        st.call_ns.extend(timings)
    return (prev - start) / n / 1000


# --------------------------------------------------------------------------- pipelined


async def _pipelined(ctx: Context, in_flight: int, total: int) -> float:
    """``in_flight`` workers share a budget of ``total`` calls; returns calls/s.

    Workers are spread round-robin over the plugins, so with 8 plugins and 256
    workers each plugin has 32 calls outstanding.
    """
    st: Embedded = ctx.state
    call = st.sup.call
    remaining = total

    async def worker(plugin: str) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1  # no await between test and decrement: no overshoot
            await call(plugin, "echo", PARAMS, timeout=CALL_TIMEOUT)

    start = time.perf_counter_ns()
    async with anyio.create_task_group() as tg:
        for w in range(in_flight):
            tg.start_soon(worker, st.names[w % len(st.names)])
    elapsed = (time.perf_counter_ns() - start) / 1e9
    return total / elapsed


async def _setup_eight(ctx: Context) -> Embedded:
    return await _start([_spec(f"echo{i}") for i in range(8)])


@case(
    "embedded-pipelined-64",
    group="supervisor",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_one,
    teardown=_stop,
    repeat=10,
)
async def embedded_pipelined_64(ctx: Context) -> float:
    """64 tasks calling one stdlib echo plugin concurrently: supervisor throughput."""
    return await _pipelined(ctx, 64, ctx.pick(full=3200, quick=256))


@case(
    "embedded-pipelined-256",
    group="supervisor",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_one,
    teardown=_stop,
    repeat=10,
)
async def embedded_pipelined_256(ctx: Context) -> float:
    """256 tasks calling one plugin (the default max_in_flight): throughput at the limit."""
    return await _pipelined(ctx, 256, ctx.pick(full=3840, quick=512))


@case(
    "embedded-pipelined-8-plugins",
    group="supervisor",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_eight,
    teardown=_stop,
    repeat=10,
)
async def embedded_pipelined_8_plugins(ctx: Context) -> float:
    """256 tasks spread over 8 stdlib echo plugins (32 in flight each): fan-out throughput."""
    return await _pipelined(ctx, 256, ctx.pick(full=3840, quick=512))


# --------------------------------------------------------------------------- restarts


def _plugin_env() -> dict[str, str]:
    # The variables a plugin inherits by default: the same interpreter start-up.
    return {k: os.environ[k] for k in DEFAULT_INHERITED_ENV if k in os.environ}


@dataclass
class Startup:
    first_byte_ms: list[float] = field(default_factory=list)


def _teardown_startup(ctx: Context) -> None:
    st: Startup = ctx.state
    if st.first_byte_ms:
        ctx.note("first_byte_ms_p50", round(summarize(st.first_byte_ms)["median"], 2))


@case(
    "python-startup",
    group="supervisor",
    unit="ms",
    baseline="python-startup",
    setup=lambda ctx: Startup(),
    teardown=_teardown_startup,
    repeat=10,
)
def python_startup(ctx: Context) -> float:
    """`python -c pass` spawn to exit: the interpreter's share of a plugin restart.

    Spawn-to-exit includes interpreter finalisation, which a restart does not
    wait for; the note ``first_byte_ms_p50`` is spawn to the child's first
    byte on stdout (start-up only), measured in the same repetitions.
    """
    st: Startup = ctx.state
    n = ctx.pick(full=5, quick=1)
    env = _plugin_env()
    total = 0
    for _ in range(n):
        start = time.perf_counter_ns()
        proc = ctx.popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL, env=env)
        # wait() without a timeout: with one, Popen.wait polls with growing
        # sleeps (up to 50 ms), which inflated this figure by ~20 ms.
        if proc.wait() != 0:
            raise RuntimeError(f"python -c pass exited with {proc.returncode}")
        total += time.perf_counter_ns() - start
        ctx.reap(proc)

        start = time.perf_counter_ns()
        proc = ctx.popen(
            [sys.executable, "-c", "import os; os.write(1, b'.')"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        if proc.stdout.read(1) != b".":
            raise RuntimeError("python start-up probe wrote nothing")
        if not ctx.warming_up:
            st.first_byte_ms.append((time.perf_counter_ns() - start) / 1e6)
        proc.wait()
        ctx.reap(proc)
    return total / n / 1e6


async def _kill_and_recover(st: Embedded, name: str) -> dict[str, float]:
    """SIGKILL the plugin's outer process (pvinit, or the plugin itself without it).

    Returns milliseconds from the kill to ``total`` (a call answered by the new
    instance) and, if ``phases_wanted``, to ``detect`` (exit noticed),
    ``spawned`` (new process handshaking) and ``ready`` (wall-clock event
    stamps).  Calls that fail in between (settled by the dying instance) are
    retried at once, as an impatient caller would; calls made while the plugin
    is coming back wait inside sup.call().
    """
    sup = st.sup
    runner = sup.runner(name)
    process = runner.process
    assert process is not None, f"plugin {name} has no process"
    old_instance = runner.instance
    async with sup.subscribe() as sub:
        wall0 = time.time()
        t0 = time.perf_counter_ns()
        os.kill(process.pid, signal.SIGKILL)
        while True:
            try:
                await sup.call(name, "echo", PARAMS, timeout=CALL_TIMEOUT)
            except CallError as exc:
                # settled by the dying instance: try again at once, but never spin
                # forever on a plugin that went to ``failed``
                if time.perf_counter_ns() - t0 > CALL_TIMEOUT * 1e9:
                    raise RuntimeError(f"plugin {name} did not come back: {exc}") from exc
                await anyio.lowlevel.checkpoint()
                continue
            # A call can still be answered by the old plugin in the microseconds
            # before the kernel has torn its namespace down; that is no restart.
            if runner.instance > old_instance:
                break
            await anyio.lowlevel.checkpoint()
        out = {"total": (time.perf_counter_ns() - t0) / 1e6}
        if st.phases_wanted:
            # "ready" was published before the call above could succeed, so
            # reading up to it never blocks.
            marks = {"exit": "detect", "handshaking": "spawned", "ready": "ready"}
            while "ready" not in out:
                ev = await sub.next()
                key = ev.kind if ev.kind == "exit" else ev.detail.get("to")
                phase = marks.get(str(key))
                if phase is not None and phase not in out:
                    out[phase] = (ev.time - wall0) * 1000
    return out


class _QuietRestarts(logging.Filter):
    """Drop the runner's "ready -> backoff" warnings: every kill here is deliberate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "killed by SIGKILL" not in record.getMessage()


_QUIET = _QuietRestarts()


def _quiet(on: bool) -> None:
    runner_log = logging.getLogger("pipevisor.runner")
    if on:
        runner_log.addFilter(_QUIET)
    else:
        runner_log.removeFilter(_QUIET)


async def _setup_restart(ctx: Context) -> Embedded:
    _quiet(True)
    return await _start([_spec("echo", NO_BACKOFF)], phases=True)


async def _teardown_restart(ctx: Context) -> None:
    try:
        await _stop(ctx)
    finally:
        _quiet(False)


@case(
    "restart-after-sigkill",
    group="supervisor",
    unit="ms",
    baseline="python-startup",
    setup=_setup_restart,
    teardown=_teardown_restart,
    repeat=15,
    warmup=1,
)
async def restart_after_sigkill(ctx: Context) -> float:
    """SIGKILL the plugin tree; ms until sup.call() answers again (no-backoff policy)."""
    st: Embedded = ctx.state
    marks = await _kill_and_recover(st, "echo")
    if not ctx.warming_up:
        for phase, ms in marks.items():
            if phase != "total":
                st.phases.setdefault(phase, []).append(ms)
    return marks["total"]


@case(
    "restart-after-sigkill-default-policy",
    group="supervisor",
    unit="ms",
    baseline="python-startup",
    repeat=7,
    warmup=1,
)
async def restart_after_sigkill_default_policy(ctx: Context) -> float:
    """Same, default RestartPolicy, first kill only (fresh supervisor per sample)."""
    _quiet(True)
    try:
        st = await _start([_spec("echo")])
        try:
            return (await _kill_and_recover(st, "echo"))["total"]
        finally:
            await st.stack.aclose()
    finally:
        _quiet(False)


# --------------------------------------------------------------------------- crash loop

# A crash loop under backoff: no jitter so that each restart's delay is known,
# a short first backoff so that a repetition stays well under a second, and an
# intensity limit the benchmark never reaches.
CRASH_LOOP = RestartPolicy(
    max_restarts=1000, within_seconds=60.0, initial_delay=0.0, first_backoff=0.05,
    factor=2.0, jitter=0.0, reset_after=60.0,
)
CRASH_LOOP_KILLS = 4


def _policy_delay_ms(policy: RestartPolicy, streak: int) -> float:
    """The delay the policy gives the ``streak``-th quick restart in a row (0-based)."""
    if streak == 0:
        return policy.initial_delay * 1000
    return min(policy.max_delay, policy.first_backoff * policy.factor ** (streak - 1)) * 1000


@case(
    "restart-crash-loop-overhead",
    group="supervisor",
    unit="ms",
    baseline="python-startup",
    repeat=5,
    warmup=1,
)
async def restart_crash_loop_overhead(ctx: Context) -> list[float]:
    """A plugin killed 4 times in a row under backoff: achieved time minus the policy's delay.

    Each repetition starts a fresh supervisor, then SIGKILLs the plugin as soon
    as it answers again, four times; the policy (no jitter) asks for delays of
    0, 50, 100 and 200 ms. One sample per kill: ms from the kill to the first
    answer of the new instance, minus the delay the policy asked for. The
    per-kill achieved and asked delays are in the notes.
    """
    _quiet(True)
    try:
        st = await _start([_spec("echo", CRASH_LOOP)])
        try:
            kills = ctx.pick(full=CRASH_LOOP_KILLS, quick=2)
            overheads = []
            for k in range(kills):
                achieved = (await _kill_and_recover(st, "echo"))["total"]
                asked = _policy_delay_ms(CRASH_LOOP, k)
                overheads.append(achieved - asked)
                if not ctx.warming_up:
                    ctx.notes.setdefault(f"kill{k + 1}_delay_ms", round(asked, 1))
                    ctx.notes.setdefault(f"kill{k + 1}_achieved_ms", []).append(round(achieved, 1))
            return overheads
        finally:
            await st.stack.aclose()
    finally:
        _quiet(False)


# --------------------------------------------------------------------------- pipevisor.kit echo

KIT_ECHO = PEERS.parent.parent / "examples" / "python-plugin-kit" / "pipevisor-kit-echo"


async def _setup_kit(ctx: Context) -> Embedded:
    if not KIT_ECHO.is_file():
        ctx.skip(f"{KIT_ECHO} is not there (pipevisor.kit example not in this checkout)")
    return await _start([PluginSpec("echo", (sys.executable, str(KIT_ECHO)))])


@case(
    "embedded-seq-kit",
    group="supervisor",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup_kit,
    teardown=_stop,
)
async def embedded_seq_kit(ctx: Context) -> float:
    """Sequential sup.call() to the pipevisor.kit echo example: the SDK's plugin-side cost."""
    return await embedded_seq_stdlib(ctx)
