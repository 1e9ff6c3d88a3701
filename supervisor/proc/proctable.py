"""Linux's process table as the limit sampler needs it, kept up to date cheaply.

Why a table of its own: with 1,000 limited plugins the sampler's cost is the kernel
producing /proc files, so the question each tick is "what is the least it must
read". The answer here:

- **New processes are found through the pid cursor**, not by listing /proc. The
  kernel hands out pids cyclically, and ``/proc/loadavg`` ends with the last pid it
  handed out in our pid namespace (every process of a plugin's own namespace has a
  pid in ours too). When the cursor has not moved, no process or thread was
  created anywhere since the last tick, so tree membership can only have shrunk.
  When it moved by a few hundred at most, only those pids are read; threads among
  them are told apart by their stat line (``exit_signal`` is -1 only for a
  non-leader thread). Only a big jump lists /proc, and only a wrap of the pid space
  (the one way a known pid could now be another process) re-reads every process.
- **Members of limited trees are re-read every tick through descriptors kept
  open** (``pread`` at offset 0: half the cost of open+read+close). A kept
  descriptor is bound to the process, not to its number: once the process is
  reaped it answers ESRCH, even if the number was handed out again. A
  single-threaded member is first asked ``/proc/PID/schedstat`` (its run and wait
  time, a quarter of the cost of ``stat``): if that did not move, the process has
  not run since, so nothing in its stat line that matters here can have changed
  (RSS grows only by its own page faults, children and threads appear only by its
  own forks) and the kept line stands. Other threads would run unseen by the
  leader's schedstat, so multi-threaded members always read ``stat``.
- Everyone else keeps the line of the pass that found it; a process outside every
  tree cannot join one (re-parenting only goes up, to a subreaper or init above it),
  so stale lines of unrelated processes never count. A full pass every
  ``FULL_PASS_EVERY`` refreshes prunes them and bounds anything missed.

The sampler (``sampler.py``) asks for one ``refresh`` per tick from its worker
thread; everything here is blocking and single-threaded by design.
"""
from __future__ import annotations

import os
import resource
from collections.abc import Collection, Iterable, Iterator

RANGE_MAX = 512
"""Most new pids read one by one; a bigger jump of the cursor lists /proc instead."""

FULL_PASS_EVERY = 60
"""Refreshes between passes that read every process (prunes the lines of processes
that ended outside any tree and bounds how long any miss could last)."""

_NUM_THREADS = 17
"""Index of ``num_threads`` (stat(5) field 20) in a stat line after the command name."""
_EXIT_SIGNAL = 35
"""Index of ``exit_signal`` (stat(5) field 38)."""


def _stat_path(pid: int | str) -> str:
    return f"/proc/{pid}/stat"


def _after_comm(data: bytes) -> bytes:
    # the command name may contain spaces and parentheses: cut after the last ')'
    return data[data.rfind(b")") + 2:]


def read_stat(pid: int | str) -> bytes | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None if it is gone."""
    try:
        fd = os.open(_stat_path(pid), os.O_RDONLY)
    except OSError:
        return None
    try:
        return _after_comm(os.read(fd, 4096))
    except OSError:
        return None
    finally:
        os.close(fd)


def last_pid() -> int | None:
    """The last pid the kernel handed out in our pid namespace (``/proc/loadavg``)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().rsplit(b" ", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


def ppid_of(rest: bytes) -> int:
    """The parent pid in a stat line after the command name ("STATE PPID ...")."""
    return int(rest.split(b" ", 2)[1])


def _field(rest: bytes, index: int) -> bytes:
    fields = rest.split(b" ", index + 1)
    return fields[index] if len(fields) > index else b""


def is_thread(rest: bytes) -> bool:
    """Whether a stat line is a non-leader thread's (only reachable by reading its tid)."""
    return _field(rest, _EXIT_SIGNAL) == b"-1"


def is_single_threaded(rest: bytes) -> bool:
    return _field(rest, _NUM_THREADS) == b"1"


class _Kept:
    """Descriptors kept open for one hot process, and what they last said."""

    __slots__ = ("line", "sched", "sched_seen", "stat")

    def __init__(self, stat: int, line: bytes) -> None:
        self.stat = stat
        self.sched = -1
        """The schedstat descriptor; -1 when multi-threaded or there is none."""
        self.sched_seen = b""
        self.line = line

    def close(self) -> None:
        os.close(self.stat)
        if self.sched >= 0:
            os.close(self.sched)
            self.sched = -1


class ProcTable:
    """pid -> stat line (after the command name) and pid -> parent, for every process."""

    def __init__(self, max_kept_fds: int | None = None) -> None:
        self.lines: dict[int, bytes] = {}
        self.parent: dict[int, int] = {}
        self.changed = True
        """Whether tree membership may differ from the previous refresh: a process
        appeared, a tree member ended or got a new parent."""
        self._kept: dict[int, _Kept] = {}
        self._kept_fds = 0
        self._cursor: int | None = None
        self._refreshes = 0
        if max_kept_fds is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_kept_fds = 4096 if soft == resource.RLIM_INFINITY else soft // 4
        self.max_kept_fds = max_kept_fds
        """Cap on descriptors kept open for re-reads: a quarter of our fd limit, so the
        plugins' own pipes never run short because of the sampler."""
        self.passes = {"full": 0, "list": 0, "range": 0, "none": 0}
        """How each refresh found new processes (for tests and perf/)."""
        self.stat_reads = 0
        self.skipped_reads = 0
        """Hot re-reads answered from the kept line because schedstat did not move."""

    # ------------------------------------------------------------------ refresh

    def refresh(self, hot: Collection[int]) -> None:
        """Bring the table up to date for this tick; ``hot`` pids (members of limited
        trees) are always re-read."""
        self.changed = False
        cursor = last_pid()
        previous, self._cursor = self._cursor, cursor
        due = self._refreshes % FULL_PASS_EVERY == 0
        self._refreshes += 1
        if due or cursor is None or previous is None or cursor < previous:
            self._full_pass()
        elif cursor == previous:
            self.passes["none"] += 1
        elif cursor - previous <= RANGE_MAX:
            self.passes["range"] += 1
            self._add_new(range(previous + 1, cursor + 1), leaders_known=False)
        else:
            self.passes["list"] += 1
            self._add_new(self._listed(), leaders_known=True)
        for pid in list(self._kept):
            if pid not in hot:
                self._forget(pid)
        self.read_now(hot)

    def read_now(self, pids: Iterable[int]) -> None:
        """Re-read ``pids`` (keeping descriptors for them): also how a tree seen for the
        first time is measured on lines of this tick, not of the pass that found it."""
        for pid in pids:
            rest = self._read(pid)
            if rest is None:
                if self.lines.pop(pid, None) is not None:
                    self.parent.pop(pid, None)
                    self.changed = True
                continue
            self.lines[pid] = rest
            ppid = ppid_of(rest)
            if self.parent.get(pid) != ppid:
                self.parent[pid] = ppid
                self.changed = True

    def _listed(self) -> Iterator[int]:
        for name in os.listdir("/proc"):
            if name.isdigit():
                pid = int(name)
                if pid not in self.lines:
                    yield pid

    def _full_pass(self) -> None:
        self.passes["full"] += 1
        self.changed = True
        # a kept descriptor whose process is gone goes first, so that every number
        # read below (possibly handed out again) maps to the process it names now
        for pid, kept in list(self._kept.items()):
            try:
                os.pread(kept.stat, 1, 0)
            except OSError:
                self._forget(pid)
        lines: dict[int, bytes] = {}
        parent: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            rest = read_stat(name)
            if rest is not None:
                pid = int(name)
                lines[pid] = rest
                parent[pid] = ppid_of(rest)
        self.lines, self.parent = lines, parent

    def _add_new(self, pids: Iterable[int], leaders_known: bool) -> None:
        for pid in pids:
            rest = read_stat(pid)
            if rest is None or (not leaders_known and is_thread(rest)):
                continue
            self.lines[pid] = rest
            self.parent[pid] = ppid_of(rest)
            self.changed = True

    # ------------------------------------------------------------------ reading

    def _read(self, pid: int) -> bytes | None:
        """One process's line through its kept descriptors, opening (and keeping) them
        when there is room. A kept descriptor that fails means the process is gone:
        it is never re-opened by number, which could now be another process."""
        kept = self._kept.get(pid)
        if kept is None:
            return self._open(pid)
        try:
            if kept.sched >= 0:
                sched = os.pread(kept.sched, 128, 0)
                if sched == kept.sched_seen:
                    self.skipped_reads += 1
                    return kept.line
                kept.sched_seen = sched
            self.stat_reads += 1
            rest = kept.line = _after_comm(os.pread(kept.stat, 4096, 0))
        except OSError:
            self._forget(pid)
            return None
        if kept.sched >= 0 and not is_single_threaded(rest):
            os.close(kept.sched)  # its threads could run unseen by the leader's schedstat
            kept.sched = -1
        return rest

    def _open(self, pid: int) -> bytes | None:
        if self.kept_fds + 2 > self.max_kept_fds:
            return read_stat(pid)
        try:
            fd = os.open(_stat_path(pid), os.O_RDONLY)
        except OSError:
            return None
        try:
            rest = _after_comm(os.read(fd, 4096))
        except OSError:
            os.close(fd)
            return None
        self.stat_reads += 1
        kept = self._kept[pid] = _Kept(fd, rest)
        self._kept_fds += 1
        if not is_single_threaded(rest):
            return rest
        try:
            kept.sched = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY)
            self._kept_fds += 1
            kept.sched_seen = os.pread(kept.sched, 128, 0)
            # it may have run between the two reads: the line compared from now on is
            # the one taken after the schedstat it goes with
            rest = kept.line = _after_comm(os.pread(fd, 4096, 0))
        except OSError:  # no schedstat in this kernel, or the process just ended
            self._forget(pid)
            return read_stat(pid)
        return rest

    @property
    def kept_fds(self) -> int:
        """Descriptors held open right now."""
        return self._kept_fds

    def _forget(self, pid: int) -> None:
        kept = self._kept.pop(pid, None)
        if kept is not None:
            self._kept_fds -= 1 if kept.sched < 0 else 2
            kept.close()

    def close(self) -> None:
        """Close every kept descriptor (the table stays usable and re-opens as needed)."""
        for pid in list(self._kept):
            self._forget(pid)

    # ------------------------------------------------------------------ trees

    def children(self) -> dict[int, list[int]]:
        """ppid -> children of every known process."""
        out: dict[int, list[int]] = {}
        for pid, ppid in self.parent.items():
            out.setdefault(ppid, []).append(pid)
        return out
