"""Scale: start-up time, supervisor RSS and supervisor CPU with 1, 100 and 1,000 idle plugins.

Each repetition starts a fresh embedded :class:`pipevisor.supervisor.Supervisor` with N
copies of ``perf/plugins/c_echo_plugin.c`` (a few hundred KB each, so the figures
are the supervisor's, not N interpreters'), waits until all N are ready, then
leaves them idle for a window while liveness pings and (when the installed
pipevisor has it) the resource-limit sampler run. Measured on the harness
process itself, which *is* the supervisor (embedded):

- ``scale-idle-N-start``: ms from entering the supervisor to all N ready;
- ``scale-idle-N-rss``: resident MB of the supervisor process after the window;
- ``scale-idle-N-cpu``: percent of one core the supervisor process used over the
  window (user + system time of all its threads / wall time);
- ``scale-idle-1000-cpu-pings-only``: the same without limits (so no sampling),
  as a ratio against ``scale-idle-1000-cpu``: the sampler's share.

The three cases of one N share one measurement: whichever runs first measures,
the others report the same repetitions. Baselines are the N=1 rows, so the
ratios say how each figure grows with N. Everything runs at the defaults a user
gets (liveness ping every 10 s, limit sampling every 1 s), and the window is
longer than the ping interval so that every plugin is pinged in it. It opens
``SETTLE`` s after all plugins are ready, once their start-up CPU has left the
sampler's 10 s CPU window: before that the sampler still re-checks every tree
on every tick, which is start-up cost, not idle cost. Every plugin
has a memory limit (action ``warn``, far above its use) so the sampler has to
watch every tree on every tick.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import psutil

from perf.harness import Context, build_c, case
from pipevisor.supervisor import PluginSpec, Supervisor
from pipevisor.supervisor.engine.config import HealthPolicy, SupervisorConfig

PLUGIN_SOURCE = Path(__file__).resolve().parent.parent / "plugins" / "c_echo_plugin.c"
PING_INTERVAL = HealthPolicy().ping_interval
SETTLE = 11.0
SAMPLE_INTERVAL = SupervisorConfig().sample_interval
SIZES = (1, 100, 1000)
QUICK_SIZES = {1: 1, 100: 4, 1000: 8}


def _window(quick: bool) -> float:
    return 0.3 if quick else PING_INTERVAL + 2.0


def _limits_kwargs() -> dict[str, Any]:
    """A generous memory limit per plugin when this pipevisor has limits, else nothing."""
    if "limits" not in {f.name for f in dataclasses.fields(PluginSpec)}:
        return {}
    try:
        from pipevisor.supervisor.engine.limits import Limit, Limits
    except ImportError:
        return {}
    return {"limits": Limits(memory=Limit(512 * 1024 * 1024, action="warn"))}  # type: ignore[arg-type]


def _config(binary: Path, n: int, sampler: bool) -> SupervisorConfig:
    health = HealthPolicy(ping_interval=PING_INTERVAL)
    limits = _limits_kwargs() if sampler else {}
    specs = tuple(PluginSpec(f"c{i}", (str(binary),), health=health, **limits) for i in range(n))
    kwargs: dict[str, Any] = {}
    if "sample_interval" in {f.name for f in dataclasses.fields(SupervisorConfig)}:
        kwargs["sample_interval"] = SAMPLE_INTERVAL if sampler else 0.0
    return SupervisorConfig(plugins=specs, **kwargs)


_MEASURED: dict[tuple[int, bool, bool], dict[str, list[float]]] = {}
_REPORTED: set[tuple[str, bool]] = set()


async def _one(binary: Path, n: int, window: float, sampler: bool) -> dict[str, float]:
    me = psutil.Process()
    async with AsyncExitStack() as stack:
        t0 = time.perf_counter()
        sup = await stack.enter_async_context(Supervisor(_config(binary, n, sampler)))
        await sup.wait_ready(timeout=120.0)
        start_ms = (time.perf_counter() - t0) * 1000
        not_ready = [r.spec.name for r in sup.runners.values() if str(r.state) != "ready"]
        if not_ready:
            raise RuntimeError(f"{len(not_ready)} plugins not ready, e.g. {not_ready[:3]}")
        await sup.call("c0", "echo", {}, timeout=10.0)
        # idle means steady state: the start-up's own CPU leaves the limit sampler's
        # CPU window (Limits.cpu_window, 10 s) before the window measured here opens
        await anyio.sleep(min(SETTLE, window))
        cpu0, wall0 = me.cpu_times(), time.perf_counter()
        await anyio.sleep(window)
        cpu1, wall1 = me.cpu_times(), time.perf_counter()
        rss_mb = me.memory_info().rss / 2**20
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"start": start_ms, "rss": rss_mb, "cpu": 100 * used / (wall1 - wall0)}


async def _measure(ctx: Context, n: int, sampler: bool = True) -> dict[str, list[float]]:
    key = (n, ctx.quick, sampler)
    if key in _MEASURED:
        return _MEASURED[key]
    binary = build_c(ctx, PLUGIN_SOURCE)
    count = QUICK_SIZES[n] if ctx.quick else n
    reps = 1 if ctx.quick else 3
    out: dict[str, list[float]] = {"start": [], "rss": [], "cpu": []}
    for _ in range(reps):
        got = await _one(binary, count, _window(ctx.quick), sampler)
        for k, v in got.items():
            out[k].append(v)
    _MEASURED[key] = out
    ctx.note("plugins", count)
    ctx.note("idle_window_s", _window(ctx.quick))
    ctx.note("ping_interval_s", PING_INTERVAL)
    ctx.note("sample_interval_s", SAMPLE_INTERVAL if sampler else 0.0)
    ctx.note("limit_sampling", sampler and bool(_limits_kwargs()))
    ctx.note("pid", os.getpid())
    return out


def _register(n: int) -> None:
    metrics = {
        "start": ("ms", f"{n} idle C plugins: ms from entering the supervisor to all ready"),
        "rss": ("MB", f"{n} idle C plugins: supervisor resident memory after the idle window"),
        "cpu": ("%core", f"{n} idle C plugins: supervisor CPU (% of one core) while idle"),
    }
    for metric, (unit, doc) in metrics.items():
        name = f"scale-idle-{n}-{metric}"

        def make(metric: str = metric) -> Any:
            async def report(ctx: Context) -> list[float]:
                samples = (await _measure(ctx, n))[metric]
                # The harness may call a case more than once (warm-up, --repeat);
                # each measured repetition is reported exactly once.
                key = (ctx.case.name, ctx.quick)
                if ctx.warming_up or key in _REPORTED:
                    return []
                _REPORTED.add(key)
                return samples

            return report

        fn = make()
        fn.__doc__ = doc
        # One repetition returns every measured repetition as its samples.
        case(name, group="scale", unit=unit, baseline=f"scale-idle-1-{metric}",
             repeat=1, warmup=0, higher_is_better=False)(fn)


for _n in SIZES:
    _register(_n)


@case("scale-idle-1000-cpu-pings-only", group="scale", unit="%core",
      baseline="scale-idle-1000-cpu", repeat=1, warmup=0, higher_is_better=False)
async def scale_idle_1000_cpu_pings_only(ctx: Context) -> list[float]:
    """1000 idle C plugins, pings but no limits and no sampler: what the sampler costs."""
    if ctx.warming_up:
        return []
    key = (ctx.case.name, ctx.quick)
    if key in _REPORTED:
        return []
    _REPORTED.add(key)
    return (await _measure(ctx, 1000, sampler=False))["cpu"]
