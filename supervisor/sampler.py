"""One task that samples every limited plugin's process tree and enforces its limits.

Why one task and one pass: with hundreds of plugins a task per plugin would mean
hundreds of timers and /proc scans. Each tick finds every tree from a single
parent map, reads each process once (``psutil.Process.oneshot``), reusing
``Process`` objects across ticks for CPU deltas. The /proc reading runs in a
worker thread so the event loop never waits on it; acting on the figures
(events, ends, throttling) happens back on the loop. Plugins without limits are
skipped before anything is read, so they cost nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import psutil

from supervisor import _platform
from supervisor.limits import LimitAction, Limits
from supervisor.states import PluginState

if TYPE_CHECKING:
    from supervisor.runner import PluginRunner

log = logging.getLogger("pipevisor.limits")

_ENDING = frozenset({PluginState.STOPPING, PluginState.STOPPED, PluginState.FAILED,
                     PluginState.BACKOFF})

_MAX_PAUSE = 1.0
"""Longest single throttle pause in seconds: keeps the plugin's answers flowing in
short bursts and bounds how long a forgotten pause could last."""


@dataclass(slots=True)
class TreeSample:
    """One tick's figures for one plugin tree."""

    rss: int = 0
    cpu_seconds: float = 0.0
    """CPU time used since the previous tick (all live processes plus reaped children)."""
    fds: int = 0
    processes: int = 0
    """Processes plus threads."""
    pids: int = 0


@dataclass(slots=True)
class _Track:
    """What the sampler remembers about one plugin instance between ticks."""

    root: int
    procs: dict[int, psutil.Process] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    window: deque[tuple[float, float]] = field(default_factory=deque)
    """(monotonic time, cpu seconds used since the previous entry)."""
    first: float = field(default_factory=time.monotonic)
    over: set[str] = field(default_factory=set)
    """Limits currently passed (warn is published once per excursion)."""
    tokens: float = 0.0
    """Throttle bucket: CPU seconds the tree may still use before it is paused."""
    last_refill: float = field(default_factory=time.monotonic)


def parent_map() -> dict[int, list[int]]:
    """ppid -> children for every process, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    if _platform.IS_LINUX:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            # the command name may contain spaces and parentheses: split after the last ')'
            ppid = int(data[data.rfind(b")") + 2:].split(b" ", 2)[1])
            children.setdefault(ppid, []).append(int(entry.name))
        return children
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"] or 0, []).append(proc.pid)
    return children


def tree_of(root: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def measure(track: _Track, pids: Iterable[int], want_fds: bool) -> TreeSample:
    """Read one tree; blocking (/proc), so called from a worker thread."""
    sample = TreeSample()
    seen: set[int] = set()
    first_tick = not track.cpu
    for pid in pids:
        proc = track.procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                continue
            track.procs[pid] = proc
        try:
            with proc.oneshot():
                rss = proc.memory_info().rss
                t = proc.cpu_times()
                threads = proc.num_threads()
                fds = proc.num_fds() if want_fds else 0
        except psutil.Error:
            continue
        seen.add(pid)
        used = t.user + t.system + t.children_user + t.children_system
        previous = track.cpu.get(pid)
        if previous is None:
            # a process born since the last tick used all its time within it;
            # at the first tick of an instance there is no "since" yet
            previous = used if first_tick else 0.0
        sample.cpu_seconds += max(0.0, used - previous)
        track.cpu[pid] = used
        sample.rss += rss
        sample.fds += fds
        sample.processes += threads
        sample.pids += 1
    for gone in set(track.procs) - seen:
        del track.procs[gone]
        track.cpu.pop(gone, None)
    return sample


class Sampler:
    """Samples the trees of ``runners`` every ``interval`` seconds and enforces limits."""

    def __init__(self, runners: dict[str, PluginRunner], interval: float) -> None:
        self._runners = runners
        self.interval = interval
        self._tracks: dict[str, _Track] = {}
        self.last_tick_seconds = 0.0
        """Wall time the last tick's /proc reading took (for perf/)."""
        self._paused: dict[str, int] = {}

    async def run(self) -> None:
        """Tick until cancelled; resumes anything still paused on the way out."""
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    await self.tick(tg)
                    await anyio.sleep(self.interval)
        finally:
            for name, pid in list(self._paused.items()):
                self._resume(name, pid)

    def _targets(self) -> list[tuple[PluginRunner, int]]:
        out = []
        for runner in self._runners.values():
            process = runner.process
            if process is None or not runner.spec.limits.any or process.returncode is not None:
                self._tracks.pop(runner.spec.name, None)
                continue
            out.append((runner, process.pid))
        return out

    async def tick(self, tg: anyio.abc.TaskGroup | None = None) -> None:
        targets = self._targets()
        if not targets:
            return
        tracks = []
        for runner, pid in targets:
            track = self._tracks.get(runner.spec.name)
            if track is None or track.root != pid:
                track = self._tracks[runner.spec.name] = _Track(pid)
                if runner.spec.limits.cpu is not None:
                    track.tokens = _bucket_size(runner.spec.limits)
            tracks.append(track)

        def read_all() -> list[TreeSample]:
            started = time.perf_counter()
            children = parent_map()
            out = [measure(track, tree_of(track.root, children),
                           runner.spec.limits.fds is not None)
                   for (runner, _), track in zip(targets, tracks, strict=True)]
            self.last_tick_seconds = time.perf_counter() - started
            return out

        samples = await anyio.to_thread.run_sync(read_all)
        now = time.monotonic()
        for (runner, pid), track, sample in zip(targets, tracks, samples, strict=True):
            if runner.process is None or runner.process.pid != pid or sample.pids == 0:
                continue  # ended while we were reading
            self._enforce(runner, track, sample, now, tg)

    def _enforce(self, runner: PluginRunner, track: _Track, sample: TreeSample, now: float,
                 tg: anyio.abc.TaskGroup | None) -> None:
        limits = runner.spec.limits
        track.window.append((now, sample.cpu_seconds))
        while track.window and track.window[0][0] < now - limits.cpu_window:
            track.window.popleft()
        span = min(limits.cpu_window, now - track.first)
        cpu_percent = 100.0 * sum(c for _, c in track.window) / span if span > 0 else 0.0
        runner.resources = {"rss": sample.rss, "cpu_percent": round(cpu_percent, 1),
                            "fds": sample.fds if limits.fds is not None else None,
                            "processes": sample.processes, "pids": sample.pids,
                            "throttled": runner.paused_since is not None,
                            "sampled_at": time.time()}
        checks: list[tuple[str, float, float | None, LimitAction | None, str]] = []
        if limits.memory is not None:
            checks.append(("memory", sample.rss, limits.memory.max, limits.memory.action,
                           f"resident memory {sample.rss} bytes > {int(limits.memory.max)}"))
        if limits.fds is not None:
            checks.append(("fds", sample.fds, limits.fds.max, limits.fds.action,
                           f"{sample.fds} open file descriptors > {int(limits.fds.max)}"))
        if limits.processes is not None:
            checks.append(("processes", sample.processes, limits.processes.max,
                           limits.processes.action, f"{sample.processes} processes and "
                           f"threads > {int(limits.processes.max)}"))
        if limits.cpu is not None:
            if limits.cpu.action is LimitAction.THROTTLE:
                self._throttle(runner, track, sample, now, cpu_percent, tg)
            elif now - track.first >= limits.cpu_window:
                checks.append(("cpu", round(cpu_percent, 1), limits.cpu.max, limits.cpu.action,
                               f"{cpu_percent:.1f}% of a core over {limits.cpu_window:g} s "
                               f"> {limits.cpu.max:g}%"))
        for name, value, maximum, action, text in checks:
            assert maximum is not None and action is not None
            if value > maximum:
                if name not in track.over or action is not LimitAction.WARN:
                    track.over.add(name)
                    runner.on_breach(name, value, maximum, action, text)
                if action is not LimitAction.WARN:
                    return
            else:
                track.over.discard(name)

    # ============================================================ throttle

    def _throttle(self, runner: PluginRunner, track: _Track, sample: TreeSample, now: float,
                  cpu_percent: float, tg: anyio.abc.TaskGroup | None) -> None:
        """Token bucket: the tree earns ``share`` CPU seconds per second, may bank up to a
        window's worth (bursts), and is paused while it is in debt."""
        limits = runner.spec.limits
        assert limits.cpu is not None
        share = limits.cpu.max / 100.0
        track.tokens = min(_bucket_size(limits),
                           track.tokens + share * (now - track.last_refill) - sample.cpu_seconds)
        track.last_refill = now
        name = runner.spec.name
        if track.tokens >= _bucket_size(limits):
            track.over.discard("cpu")  # back under its share for a while: a new episode
        if track.tokens >= 0 or name in self._paused or tg is None:
            return
        pause = min(_MAX_PAUSE, -track.tokens / share)
        if "cpu" not in track.over:
            track.over.add("cpu")
            runner.on_breach("cpu", round(cpu_percent, 1), limits.cpu.max, LimitAction.THROTTLE,
                             f"{cpu_percent:.1f}% of a core > {limits.cpu.max:g}%; "
                             "paused in turns")
        assert runner.process is not None
        pid = runner.process.pid
        _platform.pause_tree(pid)
        self._paused[name] = pid
        runner.paused_since = time.monotonic()
        tg.start_soon(self._resume_after, runner, pid, pause)

    async def _resume_after(self, runner: PluginRunner, pid: int, delay: float) -> None:
        """Resume after ``delay``, or at once when the instance starts ending (stop,
        restart, unload, a limit, a crash) so its shutdown is not held up."""
        try:
            with anyio.move_on_after(delay):
                await runner.wait_state(_ENDING, timeout=delay + 1)
        except TimeoutError:
            pass
        finally:
            self._resume(runner.spec.name, pid)

    def _resume(self, name: str, pid: int) -> None:
        if self._paused.get(name) != pid:
            return
        del self._paused[name]
        _platform.resume_tree(pid)
        runner = self._runners.get(name)
        if runner is not None:
            runner.paused_since = None
            runner.resumed_at = time.monotonic()


def _bucket_size(limits: Limits) -> float:
    assert limits.cpu is not None
    return limits.cpu.max / 100.0 * limits.cpu_window / 2
