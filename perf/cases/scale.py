"""Scale: N idle plugins on one host, N = 1, 100, 1,000, 2,500, 5,000 and 10,000 (issue 20).

Each repetition starts a fresh embedded :class:`pipevisor.supervisor.Supervisor` with N
copies of ``perf/plugins/c_echo_plugin.c`` (a few hundred KB each, so the figures
are the supervisor's, not N interpreters'), at the defaults a user gets (liveness
ping every 10 s, no resource limits, so the sampler has nothing to walk), waits until
all N are ready, lets them settle, then measures on the harness process itself, which
*is* the supervisor (embedded):

- ``scale-idle-N-start``: ms from entering the supervisor to all N ready;
- ``scale-idle-N-cpu``: percent of one core the supervisor process used over an idle
  window longer than the ping interval (user + system time of all its threads / wall);
- ``scale-idle-N-rss``: resident MB of the supervisor process after that window;
- ``scale-idle-N-threads``: threads of the supervisor process (``/proc/self/task``);
- ``scale-idle-N-p99``: p99 ms of a call to one random plugin while the others idle:
  one ``echo`` every 5 ms for a whole ping interval, each to a plugin picked at random;
- ``scale-idle-N-gc``: ms of one full garbage collection (``gc.collect()``, timed by
  ``gc.callbacks``) with the heap frozen as the supervisor leaves it
  (``HeapFreezer``); the note ``gc_unfrozen_ms`` is the same collection with the
  heap unfrozen, in the same repetition: what every full collection cost before;
- ``scale-idle-1000-cpu-limited``: N = 1,000 with a memory limit (action ``warn``) on
  every plugin, so the limit sampler walks every tree each second: its share, as a
  ratio against ``scale-idle-1000-cpu``.

The cases of one N share one measurement: whichever runs first measures, the others
report the same repetitions. Baselines are the N=1 rows, so the ratios say how each
figure grows with N. The idle window opens ``SETTLE`` s after all plugins are ready.
Notes per N: descriptors and processes in use, the descriptor limits, what the
supervisor's child watching (pidfds, and children over the descriptor budget on the
shared reaper thread) and heap freezing did. Sizes this host cannot hold (3 processes
per plugin with three quarters of ``pid_max`` at most; 3 pipes per plugin under the
hard RLIMIT_NOFILE) are skipped with the reason. When matplotlib is importable the curve is
drawn to ``perf/results/scale-<UTC timestamp>.png`` (and ``scale-latest.png``).
In ``--quick`` mode N=1, 100 and 1,000 run with 1, 4 and 8 plugins, the larger sizes
with 2 (a smoke of the code path, not a figure).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import resource
import subprocess
import sys
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
RESULTS = Path(__file__).resolve().parent.parent / "results"
PING_INTERVAL = HealthPolicy().ping_interval
SETTLE = 11.0
SAMPLE_INTERVAL = SupervisorConfig().sample_interval
SIZES = (1, 100, 1000, 2500, 5000, 10000)
QUICK_SIZES = {1: 1, 100: 4, 1000: 8, 2500: 2, 5000: 2, 10000: 2}
REPS = {1: 3, 100: 3, 1000: 3}
"""Repetitions per size (each a fresh supervisor); 1 for the larger ones and the
limited variant."""
CALL_GAP = 0.005
PROCS_PER_PLUGIN = 3  # pvinit outer and inner, and the plugin
PIPES_PER_PLUGIN = 3  # stdin, stdout, stderr; pidfds give way when descriptors run short
METRICS = {
    "start": ("ms", "ms from entering the supervisor to all ready"),
    "cpu": ("%core", "supervisor CPU (% of one core) while idle"),
    "rss": ("MB", "supervisor resident memory after the idle window"),
    "threads": ("threads", "threads of the supervisor process while idle"),
    "p99": ("ms", "p99 of a call to one random plugin while the others idle"),
    "gc": ("ms", "one full GC pass with the heap frozen by the supervisor"),
}


def _window(quick: bool) -> float:
    # A whole number of ping intervals: each plugin is pinged the same number of times
    # in any such window, whatever its phase. The 12 s window used before (one interval
    # and 2 s) counted a second ping for the plugins whose phase fell in those 2 s, a
    # fifth of them on average: the figure read about 1.2x the real rate of pings.
    return 0.3 if quick else 2 * PING_INTERVAL


def _latency_span(quick: bool) -> float:
    return 0.2 if quick else PING_INTERVAL


def _limits_kwargs() -> dict[str, Any]:
    """A generous memory limit per plugin when this pipevisor has limits, else nothing."""
    if "limits" not in {f.name for f in dataclasses.fields(PluginSpec)}:
        return {}
    try:
        from pipevisor.supervisor.engine.limits import Limit, Limits
    except ImportError:
        return {}
    return {"limits": Limits(memory=Limit(512 * 1024 * 1024, action="warn"))}  # type: ignore[arg-type]


def _config(binary: Path, n: int, limited: bool) -> SupervisorConfig:
    health = HealthPolicy(ping_interval=PING_INTERVAL)
    limits = _limits_kwargs() if limited else {}
    specs = tuple(PluginSpec(f"c{i}", (str(binary),), health=health, **limits) for i in range(n))
    kwargs: dict[str, Any] = {}
    if "sample_interval" in {f.name for f in dataclasses.fields(SupervisorConfig)}:
        kwargs["sample_interval"] = SAMPLE_INTERVAL
    return SupervisorConfig(plugins=specs, **kwargs)


def _room(n: int) -> str | None:
    """Why this host cannot hold n plugins, or None; raises the descriptor limits it can
    (soft to hard; hard too when root, as LimitNOFILE= would for a daemon)."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if os.path.exists(
        "/proc/sys/kernel/pid_max") else 1 << 22
    in_use = len(psutil.pids())
    # a quarter of the pid space stays free: other programs (test suites) share the host
    if n * PROCS_PER_PLUGIN + in_use > pid_max * 3 // 4:
        return (f"{n} plugins need {n * PROCS_PER_PLUGIN} processes; pid_max is {pid_max} "
                f"with {in_use} in use, and a quarter stays free for the rest of the host "
                "(raise it: sysctl kernel.pid_max=4194304)")
    needed = n * PIPES_PER_PLUGIN + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        return (f"{n} plugins' pipes need ~{needed} descriptors; the hard RLIMIT_NOFILE "
                f"is {hard} (raise it: ulimit -Hn, LimitNOFILE=)")
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # as the supervisor would
    return None


class _GcTimer:
    """Times full collections through gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((time.perf_counter() - self._t0) * 1000)

    def full_pass(self) -> float:
        self.pauses.clear()
        gc.callbacks.append(self)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(self)
        return self.pauses[-1]


async def _one(binary: Path, n: int, quick: bool, limited: bool) -> dict[str, float]:
    me = psutil.Process()
    window = _window(quick)
    async with AsyncExitStack() as stack:
        t0 = time.perf_counter()
        sup = await stack.enter_async_context(Supervisor(_config(binary, n, limited)))
        await sup.wait_ready(timeout=600.0)
        start_ms = (time.perf_counter() - t0) * 1000
        not_ready = [name for name in sup.names() if str(sup.state_of(name)) != "ready"]
        if not_ready:
            raise RuntimeError(f"{len(not_ready)} plugins not ready, e.g. {not_ready[:3]}")
        await sup.call("c0", "echo", {}, timeout=10.0)
        # idle means steady state: start-up work (the heap's first freeze, the limit
        # sampler's 10 s CPU window) is over before the window measured here opens
        await anyio.sleep(min(SETTLE, window))
        # process_time (CLOCK_PROCESS_CPUTIME_ID, every thread, user + system) has
        # nanosecond resolution where /proc's cpu_times counts 10 ms ticks: 0.08 % of a
        # core in a 12 s window, as wide as the differences this figure is read for
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await anyio.sleep(window)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        rss_mb = me.memory_info().rss / 2**20
        threads = len(os.listdir("/proc/self/task"))
        fds = len(os.listdir("/proc/self/fd"))
        processes = len(me.children(recursive=True))
        # one call every CALL_GAP to a random plugin, for a whole ping interval
        names = sup.names()
        rng = random.Random(n)
        lat: list[float] = []
        end = time.perf_counter() + _latency_span(quick)
        while time.perf_counter() < end:
            target = rng.choice(names)
            c0 = time.perf_counter()
            await sup.call(target, "echo", {}, timeout=10.0)
            lat.append((time.perf_counter() - c0) * 1000)
            await anyio.sleep(CALL_GAP)
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        timer = _GcTimer()
        frozen_objects = gc.get_freeze_count()
        gc_frozen = timer.full_pass()
        gc.unfreeze()
        gc_unfrozen = timer.full_pass()
        tracked = len(gc.get_objects())
        gc.freeze()  # as the supervisor had it
    used = cpu1 - cpu0
    return {"start": start_ms, "rss": rss_mb, "cpu": 100 * used / (wall1 - wall0),
            "threads": threads, "p99": p99, "gc": gc_frozen, "gc_unfrozen": gc_unfrozen,
            "p50": lat[len(lat) // 2], "max": lat[-1], "calls": len(lat), "fds": fds,
            "processes": processes, "frozen_objects": frozen_objects,
            "tracked_objects": tracked, "heap_passes": sup.heap.passes,
            "heap_pass_ms": sup.heap.last_pause_ms or 0.0,
            "watched_by_thread": _thread_watched(),
            "child_watching": sup.child_watching}  # type: ignore[dict-item]


def _thread_watched() -> int:
    """Children the pidfd watcher handed to its shared thread (over the fd budget)."""
    import asyncio

    from pipevisor.supervisor.io.child_watch import PidfdChildWatcher

    policy = asyncio.get_event_loop_policy()
    watcher = getattr(policy, "_watcher", None)
    return watcher.fallbacks if isinstance(watcher, PidfdChildWatcher) else 0


_MEASURED: dict[tuple[int, bool, bool], dict[str, list[Any]]] = {}
_REPORTED: set[tuple[str, bool]] = set()
_CURVE: dict[int, dict[str, float]] = {}


async def _measure(ctx: Context, n: int, limited: bool = False) -> dict[str, list[Any]]:
    key = (n, ctx.quick, limited)
    if key in _MEASURED:
        return _MEASURED[key]
    binary = build_c(ctx, PLUGIN_SOURCE)
    count = QUICK_SIZES[n] if ctx.quick else n
    why = _room(count)
    if why is not None:
        ctx.skip(why)
    reps = 1 if ctx.quick or limited else REPS.get(n, 1)
    out: dict[str, list[Any]] = {}
    for _ in range(reps):
        got = await _one(binary, count, ctx.quick, limited)
        for k, v in got.items():
            out.setdefault(k, []).append(v)
    _MEASURED[key] = out
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ctx.note("plugins", count)
    ctx.note("repetitions", reps)
    ctx.note("idle_window_s", _window(ctx.quick))
    ctx.note("ping_interval_s", PING_INTERVAL)
    ctx.note("limit_sampling", limited and bool(_limits_kwargs()))
    ctx.note("nofile_soft_hard", [soft, hard])
    for k in ("p50", "max", "calls", "gc_unfrozen", "fds", "processes", "frozen_objects",
              "tracked_objects", "heap_passes", "heap_pass_ms", "child_watching",
              "watched_by_thread"):
        ctx.note(k if k != "gc_unfrozen" else "gc_unfrozen_ms", out[k])
    ctx.note("pid", os.getpid())
    if not limited and not ctx.quick:
        _CURVE[n] = {k: sorted(v)[len(v) // 2] for k, v in out.items()
                     if isinstance(v[0], int | float)}
        _plot()
    return out


def _plot() -> None:
    """The curve so far, as JSON and (when matplotlib is importable) a PNG next to the
    harness's results. Drawn in a child interpreter: importing matplotlib here would add
    its ~60 MB to the RSS measured for the next sizes."""
    RESULTS.mkdir(exist_ok=True)
    data = RESULTS / "scale-latest.json"
    data.write_text(json.dumps(_CURVE, indent=1, sort_keys=True))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    subprocess.run([sys.executable, "-c", _PLOT, str(data), str(RESULTS / "scale-latest.png"),
                    str(RESULTS / f"scale-{stamp}.png")], capture_output=True, timeout=120,
                   check=False)


_PLOT = r"""
import json, sys
try:
    import matplotlib
except ImportError:
    sys.exit(0)
matplotlib.use("Agg")
import matplotlib.pyplot as plt
curve = {int(k): v for k, v in json.load(open(sys.argv[1])).items()}
ns = sorted(curve)
panels = [("start", "start, s", 1e-3), ("cpu", "idle CPU, % of a core", 1),
          ("rss", "RSS, MB", 1), ("threads", "threads", 1),
          ("p99", "call p99, ms (one call / 5 ms, random plugin)", 1),
          ("gc", "one full GC, ms", 1)]
fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
for ax, (key, label, scale) in zip(axes.flat, panels):
    ax.plot(ns, [curve[n][key] * scale for n in ns], marker="o", label="pipevisor")
    if key == "gc":
        ax.plot(ns, [curve[n]["gc_unfrozen"] for n in ns], marker="x", linestyle="--",
                label="heap not frozen")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    if key == "threads":
        ax.set_ylim(0, max(10, max(curve[n][key] for n in ns) + 1))
    ax.set_xscale("log")
    ax.set_title(label, fontsize=10)
    ax.set_xlabel("idle plugins")
    ax.grid(alpha=0.3)
fig.suptitle("pipevisor, N idle C plugins (perf/cases/scale.py)", fontsize=11)
fig.tight_layout()
for out in sys.argv[2:]:
    fig.savefig(out, dpi=100)
"""


def _register(n: int) -> None:
    for metric, (unit, doc) in METRICS.items():
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
                return [float(s) for s in samples]

            return report

        fn = make()
        fn.__doc__ = f"{n} idle C plugins: {doc}"
        # One repetition returns every measured repetition as its samples.
        case(name, group="scale", unit=unit, baseline=f"scale-idle-1-{metric}",
             repeat=1, warmup=0, higher_is_better=False)(fn)


for _n in SIZES:
    _register(_n)


@case("scale-idle-1000-cpu-limited", group="scale", unit="%core",
      baseline="scale-idle-1000-cpu", repeat=1, warmup=0, higher_is_better=False)
async def scale_idle_1000_cpu_limited(ctx: Context) -> list[float]:
    """1000 idle C plugins, each with a memory limit: the limit sampler walks every tree."""
    if ctx.warming_up:
        return []
    key = (ctx.case.name, ctx.quick)
    if key in _REPORTED:
        return []
    _REPORTED.add(key)
    return [float(s) for s in (await _measure(ctx, 1000, limited=True))["cpu"]]
