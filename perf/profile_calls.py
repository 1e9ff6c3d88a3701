"""Where a pipelined call's host time goes: the profile behind perf/README.md's
"Why 64 in flight stays under plain asyncio".

    python -m perf.profile_calls                 # py-spy if installed, else cProfile
    python -m perf.profile_calls --calls 400000 --depth 64

It runs ``--depth`` tasks calling the C echo plugin (``plugins/c_echo_plugin.c``)
through ``Supervisor.call`` and reports the host's CPU per call (psutil) and the share
of samples by function, leaving out start-up and imports. py-spy samples from outside
the process, so the figures are not inflated; cProfile (the fallback) adds a few
microseconds to every Python call, so its shares lean towards code with many small
calls. Benchmarks live in ``python -m perf``; this is for reading, not for ranking.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugins" / "c_echo_plugin.c"
PARAMS = {"text": "hello from pipevisor perf"}


def _plugin() -> str:
    from perf.harness import Case, Context, build_c

    ctx = Context(Case(name="profile", fn=lambda c: 0.0), quick=False)
    return str(build_c(ctx, PLUGIN_SOURCE))


@dataclass
class Load:
    calls: int
    depth: int


def run_load(load: Load, plugin: str) -> None:
    """The workload, in this process: prints calls/s and host CPU per call."""
    import anyio
    import psutil

    from pipevisor.supervisor import PluginSpec, Supervisor
    from pipevisor.supervisor.engine.config import HealthPolicy

    async def main() -> None:
        spec = PluginSpec("echo", (plugin,), health=HealthPolicy(ping_interval=0))
        async with Supervisor([spec]) as sup:
            await sup.wait_ready(timeout=30)
            await sup.call("echo", "echo", PARAMS)
            left = load.calls

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await sup.call("echo", "echo", PARAMS, timeout=10)

            me = psutil.Process()
            cpu0 = sum(me.cpu_times()[:2])
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(load.depth):
                    tg.start_soon(worker)
            elapsed = time.perf_counter() - start
            cpu = sum(me.cpu_times()[:2]) - cpu0
            print(f"{load.calls / elapsed:,.0f} calls/s, host CPU {cpu / load.calls * 1e6:.1f} "
                  f"us per call ({load.calls:,} calls, {load.depth} in flight)")

    anyio.run(main)


def _shares_from_pyspy(raw: Path, top: int) -> list[tuple[float, str]]:
    """Own-time shares by function from py-spy's raw (collapsed) output, counting only
    samples inside the event loop's steady state (no imports, no start-up)."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if any("importlib" in f for f in frames) or not any("_run_once" in f for f in frames):
            continue
        if any("wait_ready" in f or "__aenter__" in f or "__aexit__" in f for f in frames):
            continue
        total += int(count)
        own[frames[-1]] += int(count)
    return [(100 * n / total, name) for name, n in own.most_common(top)] if total else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=300_000)
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--cprofile", action="store_true", help="use cProfile even if py-spy is there")
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # the profiled child
    args = ap.parse_args(argv)
    load = Load(args.calls, args.depth)
    plugin = os.environ.get("PERF_PROFILE_PLUGIN") or _plugin()
    if args.run:
        run_load(load, plugin)
        return 0
    pyspy = shutil.which("py-spy")
    if pyspy and not args.cprofile:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "profile.txt"
            subprocess.run(
                [pyspy, "record", "--rate", "2000", "--format", "raw", "--output", str(raw),
                 "--", sys.executable, "-m", "perf.profile_calls", "--run",
                 "--calls", str(load.calls), "--depth", str(load.depth)],
                check=True, env={**os.environ, "PERF_PROFILE_PLUGIN": plugin})
            print("\nshare of the host's samples in the loop's steady state (py-spy, own time):")
            for share, name in _shares_from_pyspy(raw, args.top):
                print(f"{share:5.1f} %  {name}")
        return 0
    import cProfile
    import pstats

    why = "asked for" if args.cprofile else "py-spy not found (pip install py-spy)"
    print(f"cProfile ({why}); it inflates code with many small calls")
    profiler = cProfile.Profile()
    profiler.enable()
    run_load(load, plugin)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
