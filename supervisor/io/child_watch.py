"""Knowing when a child exits without a thread per child: pidfds on the event loop.

asyncio learns that a subprocess exited through the policy's *child watcher*. On Python
3.11 the default one is ``ThreadedChildWatcher``: one thread blocked in ``waitpid`` per
child, so 1,000 plugins meant 1,000 threads (issue 20). On Linux >= 5.3 a *pidfd*
(``os.pidfd_open``) turns readable when its process exits, so the running loop can
watch every child with a reader and no thread at all. :class:`PidfdChildWatcher` does
that for whichever loop spawned the child (3.11's own ``asyncio.PidfdChildWatcher`` is
bound to the one loop it was attached to, which breaks a host running loops in several
threads); Python 3.12 made asyncio's own watcher loop-independent and picks it by
itself whenever pidfds work.

:func:`install` decides once per policy and never fights a host:

- Python >= 3.12: nothing to do (``builtin``): asyncio already watches with pidfds
  where the kernel has them (``can_use_pidfd``), a thread per child elsewhere. The
  deprecated child-watcher API is not touched, so no DeprecationWarning.
- Python 3.11, stock asyncio policy, and its watcher is the default
  ``ThreadedChildWatcher`` (or none yet): replaced by :class:`PidfdChildWatcher`
  (``pidfd``). Children the old watcher already waits for keep their threads.
- A watcher the host chose itself (any other class, a subclass included), or another
  policy (uvloop watches children with libuv): left alone (``host``).
- No pidfds (macOS, BSD, Linux < 5.3, a seccomp filter), or ``PIPEVISOR_PIDFD=0`` in
  the environment, or ``install(pidfd=False)``: asyncio's own watcher stays (``threads``).
- Not on asyncio (anyio's trio backend): nothing to do (``not-asyncio``); trio waits
  for children without a thread per child by itself.

Cost: one descriptor per running child (the pidfd) besides its three pipes. Where
descriptors run short (a hard RLIMIT_NOFILE of 20,000 holds 5,000 plugins' pipes but
not their pidfds too), the children over the budget share one reaper thread
(:class:`_Reaper`): threads stay O(1) either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["ENV", "Mode", "PidfdChildWatcher", "current_mode", "install", "pidfd_supported"]

log = logging.getLogger("pipevisor.supervisor.io.child_watch")

ENV = "PIPEVISOR_PIDFD"
"""``0`` (or ``off``/``no``/``false``): keep asyncio's own child watcher (3.11: a thread
per child)."""

Mode = Literal["pidfd", "builtin", "host", "threads", "not-asyncio"]

_BUILTIN = sys.version_info >= (3, 12)


@functools.cache
def pidfd_supported() -> bool:
    """Whether this kernel and Python can open pidfds (Linux >= 5.3, Python >= 3.9)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return False
    try:
        fd = opener(os.getpid())
    except OSError:  # ENOSYS on old kernels, EPERM under some seccomp filters
        return False
    os.close(fd)
    return True


def _forced_off() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false")


if _BUILTIN or sys.platform == "win32":  # pragma: no cover - not this interpreter
    _WatcherBase: Any = object
else:
    _WatcherBase = asyncio.AbstractChildWatcher


class _Reaper:
    """One thread for every child that has no pidfd (over the descriptor budget, or
    ``pidfd_open`` failed): it blocks in ``waitid(P_ALL, WEXITED | WNOWAIT)``, which
    wakes when *any* child of the process has exited without reaping it, and reaps only
    the children registered here. A zombie that is not one of them (a child watched by
    a pidfd, about to be reaped on its loop, or a child of someone else in the process)
    is left alone: the thread then checks its own children without blocking and backs
    off (1 ms, doubling to 50 ms) until that zombie is gone, so a foreign zombie nobody
    reaps delays the exits seen here by at most 50 ms, and never steals a status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._children: dict[int, tuple[asyncio.AbstractEventLoop,
                                        Callable[..., object], tuple[Any, ...]]] = {}
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._children)

    def add(self, pid: int, loop: asyncio.AbstractEventLoop,
            callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        with self._lock:
            self._children[pid] = (loop, callback, args)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="pipevisor-child-reaper")
                self._thread.start()
            self._wake.notify()

    def remove(self, pid: int) -> bool:
        with self._lock:
            return self._children.pop(pid, None) is not None

    def _run(self) -> None:
        backoff = 0.001
        while True:
            with self._lock:
                while not self._children:
                    self._wake.wait()
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # no child left at all: ours were reaped elsewhere
                info = None
            pid = info.si_pid if info is not None else None
            with self._lock:
                entry = self._children.pop(pid, None) if pid is not None else None
            if entry is not None and pid is not None:
                self._deliver(pid, entry, 0)
                backoff = 0.001
                continue
            self._reap_exited()
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.05)

    def _reap_exited(self) -> None:
        with self._lock:
            pids = list(self._children)
        for pid in pids:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, -1
            if not done:
                continue
            with self._lock:
                entry = self._children.pop(pid, None)
            if entry is not None:
                self._finish(pid, entry, status)

    def _deliver(self, pid: int, entry: tuple[asyncio.AbstractEventLoop,
                                              Callable[..., object], tuple[Any, ...]],
                 flags: int) -> None:
        try:
            _, status = os.waitpid(pid, flags)
        except ChildProcessError:
            status = -1
        self._finish(pid, entry, status)

    @staticmethod
    def _finish(pid: int, entry: tuple[asyncio.AbstractEventLoop,
                                       Callable[..., object], tuple[Any, ...]],
                status: int) -> None:
        loop, callback, args = entry
        if status == -1:
            log.warning("child %d was reaped by someone else; its exit status is lost", pid)
            returncode = 255
        else:
            returncode = os.waitstatus_to_exitcode(status)
        if loop.is_closed():
            log.warning("child %d exited after its event loop was closed", pid)
        else:
            loop.call_soon_threadsafe(callback, pid, returncode, *args)


FDS_PER_CHILD = 4
"""A plugin's three pipes and its pidfd: what the descriptor budget counts per child."""


class PidfdChildWatcher(_WatcherBase):  # type: ignore[misc]
    """A child watcher for every loop of the process, without a thread per child.

    Each child gets a pidfd registered as a reader on the loop that spawned it (the
    running loop when asyncio calls :meth:`add_child_handler`); when it turns
    readable the child is reaped and the callback runs on that same loop. A pidfd is
    one more descriptor per child: once ``FDS_PER_CHILD`` per watched child would
    leave less than a sixteenth of the soft RLIMIT_NOFILE (at least 256) free, or when
    ``pidfd_open`` fails, further children are watched by one shared thread instead
    (:class:`_Reaper`), so the plugins' pipes are never the ones that run out: with a
    hard limit of 20,000, 4,687 children get pidfds and the rest share that thread.
    ``max_pidfds`` sets the budget outright.
    """

    def __init__(self, fallback: Any = None, *, max_pidfds: int | None = None) -> None:
        self._entries: dict[int, tuple[asyncio.AbstractEventLoop, int,
                                       Callable[..., object], tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        self._fallback = fallback
        """The ThreadedChildWatcher this one replaced: children it already watches."""
        self._reaper = _Reaper()
        self.max_pidfds = max_pidfds
        self.fallbacks = 0
        """Children handed to the shared thread (no pidfd for them)."""

    # -- the AbstractChildWatcher interface -------------------------------------------

    def __enter__(self) -> PidfdChildWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Nothing to attach: each child is watched on the loop that spawned it."""

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for loop, pidfd, _, _ in entries:
            if not loop.is_closed():
                loop.remove_reader(pidfd)
            os.close(pidfd)

    def add_child_handler(self, pid: int, callback: Callable[..., object], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        if len(self._entries) >= self._budget():
            self._to_reaper(pid, loop, callback, args, "over the descriptor budget")
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            self._to_reaper(pid, loop, callback, args, str(exc))
            return
        with self._lock:
            old = self._entries.pop(pid, None)
            self._entries[pid] = (loop, pidfd, callback, args)
        if old is not None:  # the same pid registered twice: the new callback wins
            old[0].remove_reader(old[1])
            os.close(old[1])
        loop.add_reader(pidfd, self._exited, pid)

    def remove_child_handler(self, pid: int) -> bool:
        with self._lock:
            entry = self._entries.pop(pid, None)
        if entry is None:
            return self._reaper.remove(pid) or bool(
                self._fallback is not None and self._fallback.remove_child_handler(pid))
        entry[0].remove_reader(entry[1])
        os.close(entry[1])
        return True

    # -- internals ------------------------------------------------------------------

    def _budget(self) -> int:
        if self.max_pidfds is not None:
            return self.max_pidfds
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return 1 << 30
        return max(0, (soft - max(256, soft // 16)) // FDS_PER_CHILD)

    def _to_reaper(self, pid: int, loop: asyncio.AbstractEventLoop,
                   callback: Callable[..., object], args: tuple[Any, ...], why: str) -> None:
        with self._lock:
            self.fallbacks += 1
            first = self.fallbacks == 1
        (log.info if first else log.debug)(
            "child %d has no pidfd (%s): it is watched by the one shared reaper thread, "
            "with %d pidfds open", pid, why, len(self._entries))
        self._reaper.add(pid, loop, callback, args)

    def _exited(self, pid: int) -> None:
        with self._lock:
            entry = self._entries.pop(pid, None)
        if entry is None:
            return
        loop, pidfd, callback, args = entry
        loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            # readable: the child has exited, so this does not block
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            # reaped by someone else (a waitpid(-1) elsewhere in the process)
            returncode = 255
            log.warning("child %d was reaped by someone else; its exit status is lost", pid)
        else:
            returncode = os.waitstatus_to_exitcode(status)
        callback(pid, returncode, *args)


_state_lock = threading.Lock()
_mode_of: dict[int, Mode] = {}
"""id(policy) -> what install() decided for it (a host may swap policies)."""


def current_mode() -> Mode | None:
    """What :func:`install` decided for the current policy, None before it ran."""
    if _BUILTIN:
        return _mode_of.get(0)
    return _mode_of.get(id(asyncio.get_event_loop_policy()))


def install(*, pidfd: bool | None = None) -> Mode:
    """Make sure children spawned on the running asyncio loop are watched without a
    thread each where this system allows it (see the module docstring for every
    case); cheap after the first call. ``pidfd=False`` (or ``PIPEVISOR_PIDFD=0``)
    keeps asyncio's own watcher; ``pidfd=True`` only asks for the default choice."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "not-asyncio"
    if _BUILTIN:  # pragma: no cover - Python 3.12+: asyncio picks pidfds itself
        mode: Mode = "builtin"
        _mode_of[0] = mode
        return mode
    policy = asyncio.get_event_loop_policy()
    known = _mode_of.get(id(policy))
    if known is not None and pidfd is None and (
            known != "pidfd" or isinstance(_watcher_of(policy), PidfdChildWatcher)):
        return known
    with _state_lock:
        mode = _decide(policy, pidfd)
        _mode_of[id(policy)] = mode
    return mode


def _watcher_of(policy: asyncio.AbstractEventLoopPolicy) -> object:
    # the policy creates its default watcher lazily: None means nobody chose one yet
    return getattr(policy, "_watcher", None)


def _decide(policy: asyncio.AbstractEventLoopPolicy, pidfd: bool | None) -> Mode:
    if type(policy) is not asyncio.DefaultEventLoopPolicy:
        log.debug("event loop policy %s is the host's: its child watching is kept",
                  type(policy).__name__)
        return "host"
    current = _watcher_of(policy)
    if isinstance(current, PidfdChildWatcher):
        return "pidfd"
    if current is not None and type(current) is not asyncio.ThreadedChildWatcher:
        log.info("asyncio child watcher %s was set by the host: kept (pipevisor would "
                 "have used pidfds)", type(current).__name__)
        return "host"
    if pidfd is False or (pidfd is None and _forced_off()):
        log.info("child processes are watched by asyncio's ThreadedChildWatcher (a "
                 "thread per plugin): pidfds turned off (%s=0)", ENV)
        return "threads"
    if not pidfd_supported():
        log.info("no pidfds on this system (Linux >= 5.3 has them): child processes "
                 "are watched by asyncio's ThreadedChildWatcher, a thread per plugin")
        return "threads"
    # the replaced watcher keeps the children it already waits for
    asyncio.set_child_watcher(PidfdChildWatcher(fallback=current))
    log.debug("child processes are watched with pidfds on the event loop")
    return "pidfd"
