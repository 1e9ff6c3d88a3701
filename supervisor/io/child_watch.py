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
  (``pidfd``). Children the old watcher already waits for keep their threads; the
  old watcher is kept as the fallback for any child whose pidfd cannot be opened
  (out of descriptors), so no exit is ever missed.
- A watcher the host chose itself (any other class, a subclass included), or another
  policy (uvloop watches children with libuv): left alone (``host``).
- No pidfds (macOS, BSD, Linux < 5.3, a seccomp filter), or ``PIPEVISOR_PIDFD=0`` in
  the environment, or ``install(pidfd=False)``: asyncio's own watcher stays (``threads``).
- Not on asyncio (anyio's trio backend): nothing to do (``not-asyncio``); trio waits
  for children without a thread per child by itself.

Cost: one descriptor per running child (the pidfd) besides its three pipes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
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


class PidfdChildWatcher(_WatcherBase):  # type: ignore[misc]
    """A child watcher for every loop of the process, without threads (Python 3.11).

    Each child gets a pidfd registered as a reader on the loop that spawned it (the
    running loop when asyncio calls :meth:`add_child_handler`); when it turns
    readable the child is reaped and the callback runs on that same loop. A child
    whose pidfd cannot be opened (EMFILE/ENFILE, or a kernel that refuses) is handed
    to ``fallback``, a ``ThreadedChildWatcher``: one thread for that child only.
    """

    def __init__(self, fallback: Any = None) -> None:
        self._entries: dict[int, tuple[asyncio.AbstractEventLoop, int,
                                       Callable[..., object], tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        self._fallback = fallback
        self.fallbacks = 0
        """Children that had to be watched by a thread (no pidfd could be opened)."""

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
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            self._watch_with_thread(pid, callback, args, exc)
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
            return bool(self._fallback is not None
                        and self._fallback.remove_child_handler(pid))
        entry[0].remove_reader(entry[1])
        os.close(entry[1])
        return True

    # -- internals ------------------------------------------------------------------

    def _watch_with_thread(self, pid: int, callback: Callable[..., object],
                           args: tuple[Any, ...], exc: OSError) -> None:
        with self._lock:
            if self._fallback is None:
                self._fallback = asyncio.ThreadedChildWatcher()
            self.fallbacks += 1
            first = self.fallbacks == 1
        (log.warning if first else log.debug)(
            "no pidfd for child %d (%s): it is watched by a thread instead%s", pid, exc,
            "; raise the descriptor limit (RLIMIT_NOFILE) for many plugins" if first else "")
        self._fallback.add_child_handler(pid, callback, *args)

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
    # the replaced watcher keeps the children it already waits for, and catches the
    # ones whose pidfd cannot be opened
    asyncio.set_child_watcher(PidfdChildWatcher(fallback=current))
    log.debug("child processes are watched with pidfds on the event loop")
    return "pidfd"
