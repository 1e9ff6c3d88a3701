"""One task that samples every limited plugin's process tree and enforces its limits.

Why one task and one pass: with hundreds of plugins a task per plugin would mean
hundreds of timers and /proc scans. On Linux a tick re-reads one ``/proc/PID/stat``
line per limited plugin process (parent, CPU times, threads and RSS are all in that
line) and finds new processes through the kernel's pid cursor (``proctable.py``),
since the kernel producing /proc files is most of the cost; elsewhere psutil does
it, reusing ``Process`` objects across ticks for CPU deltas. The reading runs in a
worker thread so the event loop never waits on it; acting on the figures (events,
ends, throttling) happens back on the loop, and a tree whose figures did not move
since the last tick costs one comparison there. Plugins without limits are skipped
before anything is read. docs/limits.md has the figures.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import psutil

from pipevisor.supervisor.engine.limits import Limit, LimitAction, Limits
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc import tree
from pipevisor.supervisor.proc.proctable import ProcTable

if TYPE_CHECKING:
    from anyio.abc import Process

    from pipevisor.supervisor.engine.runner import PluginRunner

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
    shims: set[int] = field(default_factory=set)
    """Members that are pipevisor's own pvinit shim (the root, and with a pid namespace
    the namespace's init below it): small, single-threaded and steady, so on the Linux
    fast path their stat lines are refreshed only on full passes."""
    shim_checked: set[int] = field(default_factory=set)
    parsed: dict[int, tuple[bytes, ProcFigures]] = field(default_factory=dict)
    """Last parsed stat line per pid (fast path), reused while the line is unchanged."""
    members: list[int] = field(default_factory=list)
    """The tree's pids at the last tick (fast path: re-walked only when the process
    table says membership may have changed)."""
    last: TreeSample | None = None
    """The sample the last full check was made on (``Sampler._enforce``)."""
    last_lines: list[bytes | None] = field(default_factory=list)
    """The members' stat lines at the last tick (fast path): equal lines, equal figures."""
    at_rest: bool = False
    """The last full check found nothing that changes on its own: no CPU in the window,
    no paused tree, a full throttle bucket. With the same sample again (``measure``
    hands back ``last`` itself), the next check can be skipped."""
    procs: dict[int, psutil.Process] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    window: deque[tuple[float, float]] = field(default_factory=deque)
    """(monotonic time, cpu seconds used since the previous entry)."""
    window_cpu: float = 0.0
    """Sum of the CPU seconds in ``window``, kept as entries come and go."""
    first: float = field(default_factory=time.monotonic)
    over: set[str] = field(default_factory=set)
    """Limits currently passed (warn is published once per excursion)."""
    tokens: float = 0.0
    """Throttle bucket: CPU seconds the tree may still use before it is paused."""
    last_refill: float = field(default_factory=time.monotonic)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

ProcFigures = tuple[float, int, int, int]
"""(CPU seconds used so far including reaped children, RSS bytes, threads, open fds;
fds is 0 unless asked for): what the sampler needs of one process."""


def parent_map() -> dict[int, list[int]]:
    """ppid -> children for every process, through psutil (the portable path; on Linux
    the fast path keeps a ``ProcTable`` instead)."""
    children: dict[int, list[int]] = {}
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


def _fd_count_by_stat() -> bool:
    """Whether ``stat("/proc/PID/fd").st_size`` is the number of open fds (Linux 6.2+):
    one syscall instead of opening and listing the directory."""
    try:
        return os.stat(f"/proc/{os.getpid()}/fd").st_size > 0
    except OSError:
        return False


_FD_BY_STAT: bool | None = None


def count_fds(pid: int) -> int:
    """Open fds of ``pid`` on Linux (raises OSError if it is gone or not ours)."""
    global _FD_BY_STAT
    if _FD_BY_STAT is None:
        _FD_BY_STAT = _fd_count_by_stat()
    if _FD_BY_STAT:
        return os.stat(f"/proc/{pid}/fd").st_size
    return len(os.listdir(f"/proc/{pid}/fd"))


def figures_from_stat(pid: int, rest: bytes, want_fds: bool,
                      exact_rss: bool = True) -> ProcFigures | None:
    """One process's figures from its stat line (``ProcTable.lines``); None if it is
    gone by the time its fds or statm are read. Zombies count (RSS 0, one thread), as
    they do through psutil.

    ``exact_rss``: the RSS in ``stat`` is the kernel's cheap per-CPU-batched
    approximation (seen on 6.18; a few hundred KB off on a 2-core box, more with many
    CPUs), while ``statm`` sums it exactly, as psutil reports it. A memory limit is
    enforced against the exact figure whenever the estimate is near the limit
    (``measure``)."""
    f = rest.split(b" ")
    # indexes are stat(5) field numbers minus 3: state=0, ppid=1, utime=11, stime=12,
    # cutime=13, cstime=14, num_threads=17, rss=21 (pages)
    ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    fds = 0
    if want_fds:
        try:
            fds = count_fds(pid)
        except OSError:
            return None
    rss = int(f[21]) * _PAGE_SIZE
    if exact_rss:
        exact = statm_rss(pid)
        if exact is None:
            return None
        rss = exact
    return ticks / _CLOCK_TICKS, rss, int(f[17]), fds


def statm_rss(pid: int) -> int | None:
    """Exact resident bytes of ``pid`` from ``/proc/PID/statm``; None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
        try:
            return int(os.read(fd, 256).split(b" ", 2)[1]) * _PAGE_SIZE
        finally:
            os.close(fd)
    except (OSError, IndexError, ValueError):
        return None


def _possible_cpus() -> int:
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            return int(f.read().strip().split(",")[-1].split("-")[-1]) + 1
    except (OSError, ValueError):
        return 2 * (os.cpu_count() or 1)


def _stat_rss_slack() -> int:
    """Most bytes by which one process's RSS in ``stat`` can be off: the kernel keeps
    three RSS counters (file, anon, shmem) as per-CPU counters, each CPU holding back
    fewer than ``max(32, 2 * CPUs)`` pages before folding them into the total that
    ``stat`` shows (``statm`` sums the per-CPU parts)."""
    cpus = _possible_cpus()
    return 3 * cpus * max(32, 2 * cpus) * _PAGE_SIZE


STAT_RSS_SLACK = _stat_rss_slack() if _platform.IS_LINUX else 0


def figures_by_psutil(proc: psutil.Process, want_fds: bool) -> ProcFigures | None:
    """The same figures through psutil (the portable path); None if it is gone."""
    try:
        with proc.oneshot():
            rss = proc.memory_info().rss
            t = proc.cpu_times()
            threads = proc.num_threads()
            fds = proc.num_fds() if want_fds else 0
    except psutil.Error:
        return None
    return t.user + t.system + t.children_user + t.children_system, rss, threads, fds


def measure(track: _Track, pids: Iterable[int], want_fds: bool,
            stats: dict[int, bytes] | None = None,
            rss_limit: float | None = None) -> TreeSample:
    """Read one tree; blocking (/proc), so called from a worker thread. With ``stats``
    (Linux) the figures come from that one pass; without, from psutil.

    On the fast path the tree's RSS is stat's estimate unless it is within the
    estimate's error (``STAT_RSS_SLACK`` per process) of ``rss_limit``: then each
    member's exact RSS is read, so a memory limit is decided on the same figure as
    psutil's (``rss_limit=0`` always reads it)."""
    last = track.last
    if stats is not None and not want_fds:
        lines = [stats.get(pid) for pid in pids]
        if (last is not None and lines == track.last_lines
                and (rss_limit is None
                     or last.rss + 2 * STAT_RSS_SLACK * last.pids < rss_limit)):
            # not a byte moved in the tree (an idle plugin): the figures are the last
            # ones, with no CPU used since. Near the memory limit the exact RSS (statm)
            # can move under an unchanged stat line, so it is read again there.
            if last.cpu_seconds == 0.0:
                return last
            return TreeSample(last.rss, 0.0, last.fds, last.processes, last.pids)
        track.last_lines = lines
    sample = TreeSample()
    seen: set[int] = set()
    first_tick = not track.cpu
    for pid in pids:
        figures: ProcFigures | None
        if stats is not None:
            rest = stats.get(pid)
            if rest is None:
                continue
            hit = track.parsed.get(pid)
            if hit is not None and hit[0] == rest and not want_fds:
                figures = hit[1]  # an idle process: the same line, the same figures
            else:
                figures = figures_from_stat(pid, rest, want_fds, exact_rss=False)
                if figures is not None:
                    track.parsed[pid] = (rest, figures)
        else:
            proc = track.procs.get(pid)
            if proc is None:
                try:
                    proc = track.procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    continue
            figures = figures_by_psutil(proc, want_fds)
        if figures is None:
            continue
        used, rss, threads, fds = figures
        seen.add(pid)
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
    if (stats is not None and rss_limit is not None
            and sample.rss + STAT_RSS_SLACK * sample.pids >= rss_limit):
        sample.rss = sum(statm_rss(pid) or 0 for pid in seen)
    if len(track.cpu) != len(seen):
        for gone in set(track.cpu) - seen:
            del track.cpu[gone]
            track.procs.pop(gone, None)
            track.parsed.pop(gone, None)
    return sample


class Sampler:
    """Samples the trees of ``runners`` every ``interval`` seconds and enforces limits."""

    def __init__(self, runners: dict[str, PluginRunner], interval: float) -> None:
        self._runners = runners
        self._limited: list[PluginRunner] | None = None
        """The runners whose specs set limits (a spec never changes on a runner); None:
        find them again. At 5,000 plugins without limits, looking at each one every
        tick was a third of the idle daemon's CPU besides the pings."""
        self._limited_of = 0
        """len(runners) when _limited was found: a safety net for a caller that changes
        the runners without :meth:`runners_changed`."""
        self.interval = interval
        self._tracks: dict[str, _Track] = {}
        self.failures = 0
        """Ticks that raised (logged; sampling goes on)."""
        self.last_tick_seconds = 0.0
        """Wall time the last tick's /proc reading took (for perf/)."""
        self._paused: dict[str, int] = {}
        self._hot: set[int] | None = None
        """Pids the table re-reads each tick: the trees' members minus their shims,
        rebuilt only when a tree or its membership changed."""
        self.table = ProcTable() if _platform.IS_LINUX else None
        """The process table of the Linux fast path, kept between ticks."""
        self.fast = True
        """On Linux, read every figure from one pass over /proc/*/stat (False: psutil,
        the portable path, kept for comparison)."""

    async def run(self) -> None:
        """Tick until cancelled; resumes anything still paused on the way out."""
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        await self.tick(tg)
                    except Exception as exc:  # never the supervisor's end: log, start afresh
                        self.failures += 1
                        log.error("resource sampling failed (#%d); the next tick reads "
                                  "every tree afresh: %r", self.failures, exc, exc_info=exc)
                        self._tracks.clear()
                        self._hot = None
                    await anyio.sleep(self.interval)
        finally:
            for name, pid in list(self._paused.items()):
                self._resume(name, pid)
            if self.table is not None:
                self.table.close()

    def runners_changed(self) -> None:
        """A runner was added or removed: find the limited ones again at the next tick."""
        self._limited = None

    def _targets(self) -> list[tuple[PluginRunner, Process, int]]:
        limited = self._limited
        runners = self._runners
        if limited is None or self._limited_of != len(runners):
            limited = self._limited = [r for r in runners.values() if r.spec.limits.any]
            self._limited_of = len(runners)
        out = []
        for runner in limited:
            process = runner.process
            if process is None or process.returncode is not None:
                self._tracks.pop(runner.spec.name, None)
                continue
            out.append((runner, process, process.pid))
        return out

    async def tick(self, tg: anyio.abc.TaskGroup | None = None) -> None:
        targets = self._targets()
        if not targets:
            return
        tracks = []
        if len(self._tracks) > len(targets):  # unloaded plugins
            names = {runner.spec.name for runner, _, _ in targets}
            for gone in self._tracks.keys() - names:
                del self._tracks[gone]
            self._hot = None
        for runner, _, pid in targets:
            track = self._tracks.get(runner.spec.name)
            if track is None or track.root != pid:
                self._hot = None
                track = self._tracks[runner.spec.name] = _Track(pid)
                if _platform.IS_LINUX and tree._is_shim(pid):
                    track.shims.add(pid)
                if runner.spec.limits.cpu is not None:
                    track.tokens = _bucket_size(runner.spec.limits)
            tracks.append(track)

        def read_all() -> list[TreeSample]:
            started = time.perf_counter()
            table = self.table if self.fast else None
            stats = None
            if table is not None:
                hot = self._hot
                if hot is None:
                    hot = self._hot = set()
                    for track in tracks:
                        hot.update(track.members)
                        hot.difference_update(track.shims)
                table.refresh(hot)
                stats = table.lines
                children = None
                fresh: list[int] = []
                for track in tracks:
                    if table.changed or not track.members:
                        self._hot = None
                        if children is None:
                            children = table.children()
                        _find_inner_shim(track, children)
                        if not track.members:
                            fresh.extend(tree_of(track.root, children))
                        track.members = tree_of(track.root, children)
                if fresh:
                    table.read_now(fresh)
            else:
                children = parent_map()
                for track in tracks:
                    track.members = tree_of(track.root, children)
            out = [measure(track, track.members, runner.spec.limits.fds is not None, stats,
                           None if runner.spec.limits.memory is None
                           else runner.spec.limits.memory.max)
                   for (runner, _, _), track in zip(targets, tracks, strict=True)]
            self.last_tick_seconds = time.perf_counter() - started
            return out

        samples = await anyio.to_thread.run_sync(read_all)
        now, wall = time.monotonic(), time.time()
        for (runner, process, _), track, sample in zip(targets, tracks, samples, strict=True):
            if runner.process is not process or sample.pids == 0:
                continue  # ended while we were reading
            if sample is track.last and track.at_rest and runner.paused_since is None:
                # the same figures as the last check, which found the tree at rest:
                # every comparison would come out the same (most plugins, at scale)
                resources = runner.resources
                if resources is not None:
                    resources["sampled_at"] = wall
                track.last_refill = now
                continue
            try:
                self._enforce(runner, track, sample, now, tg)
            except Exception as exc:  # this plugin's instance ends; the others are checked
                self._tracks.pop(runner.spec.name, None)
                runner.fault(exc, "limit enforcement")

    def _enforce(self, runner: PluginRunner, track: _Track, sample: TreeSample, now: float,
                 tg: anyio.abc.TaskGroup | None) -> None:
        limits = runner.spec.limits
        window = track.window
        if sample.cpu_seconds:  # a tick without CPU adds nothing to the window's sum
            window.append((now, sample.cpu_seconds))
            track.window_cpu += sample.cpu_seconds
        horizon = now - limits.cpu_window
        while window and window[0][0] < horizon:
            track.window_cpu -= window.popleft()[1]
        if not window:
            track.window_cpu = 0.0
        span = min(limits.cpu_window, now - track.first)
        cpu_percent = 100.0 * max(0.0, track.window_cpu) / span if span > 0 else 0.0
        track.last = sample
        track.at_rest = (cpu_percent == 0.0 and not window and runner.paused_since is None
                         and self._bucket_full(track, limits))
        runner.resources = {"rss": sample.rss, "cpu_percent": round(cpu_percent, 1),
                            "fds": sample.fds if limits.fds is not None else None,
                            "processes": sample.processes, "pids": sample.pids,
                            "throttled": runner.paused_since is not None,
                            "sampled_at": time.time()}
        # the breach texts are only formatted once a limit is passed: this runs for every
        # limited plugin on every tick, on the event loop
        if limits.memory is not None and self._check(
                runner, track, "memory", sample.rss, limits.memory,
                lambda m: f"resident memory {sample.rss} bytes > {int(m)}"):
            return
        if limits.fds is not None and self._check(
                runner, track, "fds", sample.fds, limits.fds,
                lambda m: f"{sample.fds} open file descriptors > {int(m)}"):
            return
        if limits.processes is not None and self._check(
                runner, track, "processes", sample.processes, limits.processes,
                lambda m: f"{sample.processes} processes and threads > {int(m)}"):
            return
        if limits.cpu is not None:
            if limits.cpu.action is LimitAction.THROTTLE:
                self._throttle(runner, track, sample, now, cpu_percent, tg)
            elif now - track.first >= limits.cpu_window:
                self._check(runner, track, "cpu", round(cpu_percent, 1), limits.cpu,
                            lambda m: f"{cpu_percent:.1f}% of a core over "
                                      f"{limits.cpu_window:g} s > {m:g}%")

    @staticmethod
    def _bucket_full(track: _Track, limits: Limits) -> bool:
        """Whether a throttled tree's token bucket has nothing left to refill (always
        true without a CPU throttle), so skipping a refill loses nothing."""
        cpu = limits.cpu
        return (cpu is None or cpu.action is not LimitAction.THROTTLE
                or track.tokens >= _bucket_size(limits))

    @staticmethod
    def _check(runner: PluginRunner, track: _Track, name: str, value: float, limit: Limit,
               text: Callable[[float], str]) -> bool:
        """Compare one figure; on a breach tell the runner (a warning once per excursion).
        True when the action ends the instance, so nothing else needs checking."""
        if value <= limit.max:
            track.over.discard(name)
            return False
        if name not in track.over or limit.action is not LimitAction.WARN:
            track.over.add(name)
            runner.on_breach(name, value, limit.max, limit.action, text(limit.max))
        return limit.action is not LimitAction.WARN

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
        tree.pause_tree(pid)
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
        tree.resume_tree(pid)
        runner = self._runners.get(name)
        if runner is not None:
            runner.paused_since = None
            runner.resumed_at = time.monotonic()


def _find_inner_shim(track: _Track, children: dict[int, list[int]]) -> None:
    """With a pid namespace, the root shim's child is a second pvinit (the namespace's
    init) whose child is the plugin. Only a shim image that already has a child counts:
    a plugin between fork and exec is a shim image too, but has no children yet."""
    if track.root not in track.shims or len(track.shims) > 1:
        return
    for pid in children.get(track.root, ()):
        if pid not in track.shim_checked and children.get(pid):
            track.shim_checked.add(pid)
            if tree._is_shim(pid):
                track.shims.add(pid)


def _bucket_size(limits: Limits) -> float:
    assert limits.cpu is not None
    return limits.cpu.max / 100.0 * limits.cpu_window / 2
