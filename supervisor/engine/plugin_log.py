"""What a plugin may put into the host's memory and log: a tail bounded in bytes and lines,
and a log budget in lines *and* bytes per second.

A plugin's stderr and its ``pipevisor/log`` notifications are text the host did not ask
for; a hostile plugin can make them as long and as fast as it likes. Counting lines
alone let one plugin write ~16 MB/s into the log with 64 KiB lines; counting bytes as
well keeps the log (and the journal behind it) at a known cost per plugin. Nothing
here does I/O: the runner feeds lines in and logs what it is allowed to.
"""

from __future__ import annotations

import time
from collections import deque


class StderrTail:
    """The last lines a plugin wrote to stderr, for status, ``logs`` and crash reports:
    at most ``max_lines`` lines and ``max_bytes`` bytes of text (the oldest go first;
    a single line longer than ``max_bytes`` keeps only its end). Each line keeps when
    it arrived and from which instance, so ``pipevisor logs`` can show both."""

    def __init__(self, max_lines: int, max_bytes: int = 1 << 20) -> None:
        self.lines: deque[str] = deque()
        self.meta: deque[tuple[float, int]] = deque()
        """(wall time, instance) of each line in ``lines``."""
        self.max_lines = max(0, max_lines)
        self.max_bytes = max(1, max_bytes)
        self.bytes = 0
        self.total = 0
        """Lines ever added (dropped ones included)."""

    def add(self, line: str, instance: int = 0, at: float | None = None) -> None:
        self.total += 1
        if self.max_lines == 0:
            return
        if len(line) > self.max_bytes:
            line = line[-self.max_bytes:]
        self.lines.append(line)
        self.meta.append((time.time() if at is None else at, instance))
        self.bytes += len(line)
        while len(self.lines) > self.max_lines or self.bytes > self.max_bytes:
            self.bytes -= len(self.lines.popleft())
            self.meta.popleft()

    def last(self, n: int) -> list[str]:
        if n <= 0:
            return []
        if n >= len(self.lines):
            return list(self.lines)
        return list(self.lines)[-n:]

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
