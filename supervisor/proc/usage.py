"""Memory and CPU of a process tree, read when someone asks (``status``), as opposed
to the sampler's periodic reads for limits (engine/sampler.py over proc/proctable.py).
Blocking (psutil): call it from a worker thread when there are many trees."""

from __future__ import annotations

import time
from typing import Any

import psutil

__all__ = ["EMPTY", "TreeUsage"]

EMPTY: dict[str, Any] = {"memory_rss": None, "cpu_seconds": None, "cpu_percent": None,
                         "processes": 0}
"""What a tree that is gone (or not started) reports."""


class TreeUsage:
    """Memory and CPU of each plugin's process tree, sampled when someone asks.

    CPU percent is over the interval since the previous ``status`` (the first
    time: since the plugin started), summed over the tree, so 200 means two
    cores busy.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, float]] = {}

    def sample(self, pid: int) -> dict[str, Any]:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
            started = root.create_time()
        except psutil.Error:
            return {"memory_rss": None, "cpu_seconds": None, "cpu_percent": None, "processes": 0}
        rss = 0
        cpu = 0.0
        count = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system
                count += 1
            except psutil.Error:
                continue
        now = time.time()
        prev_time, prev_cpu = self._last.get(pid, (started, 0.0))
        elapsed = now - prev_time
        self._last[pid] = (now, cpu)
        percent = max(0.0, (cpu - prev_cpu) / elapsed * 100) if elapsed > 0 else None
        return {"memory_rss": rss, "cpu_seconds": round(cpu, 3),
                "cpu_percent": round(percent, 1) if percent is not None else None,
                "processes": count}

    def forget_except(self, pids: set[int]) -> None:
        for pid in [p for p in self._last if p not in pids]:
            del self._last[pid]
