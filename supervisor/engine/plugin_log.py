"""What a plugin may put into the host's memory and log: a tail bounded in bytes and lines,
and a log budget in lines *and* bytes per second.

A plugin's stderr and its ``pipevisor/log`` notifications are text the host did not ask
for; a hostile plugin can make them as long and as fast as it likes. Counting lines
alone let one plugin write ~16 MB/s into the log with 64 KiB lines; counting bytes as
well keeps the log (and the journal behind it) at a known cost per plugin. Nothing
here does I/O: the runner feeds lines in and logs what it is allowed to.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any


class StderrTail:
    """The last lines a plugin wrote to stderr, for status, ``logs`` and crash reports:
    at most ``max_lines`` lines and ``max_bytes`` bytes of text (the oldest go first;
    a single line longer than ``max_bytes`` keeps only its end). Each line keeps when
    it arrived and from which instance, so ``pipevisor logs`` can show both.

    It may begin with lines *carried* over from a previous run of the host (a daemon
    restart: :meth:`seed`, :meth:`export`). They count against the same bounds and go
    first, but :meth:`last` (status, crash reports) never returns them: they are not
    this run's; :meth:`entries` does, and :meth:`carried_in` says how many of them."""

    def __init__(self, max_lines: int, max_bytes: int = 1 << 20) -> None:
        self.lines: deque[str] = deque()
        self.meta: deque[tuple[float, int]] = deque()
        """(wall time, instance) of each line in ``lines``."""
        self.max_lines = max(0, max_lines)
        self.max_bytes = max(1, max_bytes)
        self.bytes = 0
        self.total = 0
        """Lines ever added (dropped ones included)."""
        self.carried = 0
        """How many of the oldest lines were carried over from a previous run."""

    def add(self, line: str, instance: int = 0, at: float | None = None) -> None:
        self.total += 1
        if self.max_lines == 0:
            return
        if len(line) > self.max_bytes:
            line = line[-self.max_bytes:]
        self.lines.append(line)
        self.meta.append((time.time() if at is None else at, instance))
        self.bytes += len(line)
        self._trim()

    def _trim(self) -> None:
        while len(self.lines) > self.max_lines or self.bytes > self.max_bytes:
            self.bytes -= len(self.lines.popleft())
            self.meta.popleft()
            if self.carried:
                self.carried -= 1

    def last(self, n: int) -> list[str]:
        """The last ``n`` lines of this run (never carried ones)."""
        n = min(n, len(self.lines) - self.carried)
        if n <= 0:
            return []
        if n >= len(self.lines):
            return list(self.lines)
        return list(self.lines)[-n:]

    def carried_in(self, n: int) -> int:
        """How many of the last ``n`` lines (as :meth:`entries` gives them) are carried."""
        return max(0, self.carried - max(0, len(self.lines) - n))

    def export(self) -> list[list[Any]]:
        """Every line kept, oldest first, as ``[time, instance, line, carried]`` (JSON
        ready), for the host to save when it stops."""
        carried = self.carried
        return [[at, instance, line, i < carried]
                for i, ((at, instance), line) in enumerate(zip(self.meta, self.lines,
                                                               strict=True))]

    def seed(self, entries: Iterable[Any]) -> int:
        """Put lines a previous run kept (:meth:`export`'s rows, read back from a file
        the host cannot fully trust) before this run's, as carried lines; rows that
        are not ``[number, int, str, ...]`` are skipped, and the tail's bounds hold
        (the oldest go first). Returns how many were kept."""
        rows: list[tuple[float, int, str]] = []
        for row in entries:
            if not (isinstance(row, list | tuple) and len(row) >= 3):
                continue
            at, instance, line = row[0], row[1], row[2]
            if (type(at) not in (int, float) or not math.isfinite(at)
                    or type(instance) is not int or not isinstance(line, str)):
                continue
            rows.append((float(at), instance, line[-self.max_bytes:]))
        if not rows or self.max_lines == 0:
            return 0
        live = list(zip(self.meta, self.lines, strict=True))[self.carried:]
        self.lines = deque(line for _, _, line in rows)
        self.meta = deque((at, instance) for at, instance, _ in rows)
        self.lines.extend(line for _, line in live)
        self.meta.extend(meta for meta, _ in live)
        self.bytes = sum(len(line) for line in self.lines)
        self.carried = len(rows)
        self._trim()
        return self.carried

    def entries(self, n: int) -> list[tuple[float, int, str]]:
        """The last ``n`` lines as (time, instance, line)."""
        if n <= 0:
            return []
        both = list(zip(self.meta, self.lines, strict=True))[-n:]
        return [(at, instance, line) for (at, instance), line in both]


class LogBudget:
    """Two token buckets, lines/s and bytes/s, each holding one second's worth (the
    burst). A line is logged only if both allow it; what is refused is counted and
    reported by the next line that gets through (``take_suppressed``)."""

    __slots__ = ("_bytes", "_lines", "_refill", "bytes_per_second", "lines_per_second",
                 "suppressed_bytes", "suppressed_lines", "total_suppressed_bytes",
                 "total_suppressed_lines")

    def __init__(self, lines_per_second: float, bytes_per_second: float, now: float) -> None:
        self.lines_per_second = lines_per_second
        self.bytes_per_second = bytes_per_second
        self._lines = lines_per_second
        self._bytes = bytes_per_second
        self._refill = now
        self.suppressed_lines = 0
        self.suppressed_bytes = 0
        self.total_suppressed_lines = 0
        self.total_suppressed_bytes = 0

    def allow(self, size: int, now: float) -> bool:
        elapsed = max(0.0, now - self._refill)
        self._refill = now
        self._lines = min(self.lines_per_second, self._lines + elapsed * self.lines_per_second)
        self._bytes = min(self.bytes_per_second, self._bytes + elapsed * self.bytes_per_second)
        if self._lines >= 1 and self._bytes >= min(size, self.bytes_per_second):
            self._lines -= 1
            self._bytes -= size  # may go negative: a long line is paid for afterwards
            return True
        self.suppressed_lines += 1
        self.suppressed_bytes += size
        self.total_suppressed_lines += 1
        self.total_suppressed_bytes += size
        return False

    def take_suppressed(self) -> tuple[int, int]:
        """(lines, bytes) refused since the last call."""
        out = (self.suppressed_lines, self.suppressed_bytes)
        self.suppressed_lines = self.suppressed_bytes = 0
        return out
