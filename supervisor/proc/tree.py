"""Acting on a plugin's whole process tree (signal, pause, kill) and reaping what
the supervisor adopts as a subreaper; the rest of the engine never walks a tree
itself."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
from collections.abc import Container, Iterable

import psutil

from pipevisor.supervisor.proc.shim import FORWARDED_SIGNALS, IS_LINUX, _known_shims

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
# Convergence bound for freeze loops: a tree that keeps producing new processes
# faster than we can stop them is still killed, just not atomically.
_FREEZE_PASSES = 50


def tree_pids(pid: int) -> list[int]:
    """Return ``pid`` followed by all its live descendants; [] if it is gone."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    return [pid, *(c.pid for c in children)]


def plugin_pid(root: int) -> int | None:
    """The plugin's own pid below ``root`` (what the supervisor spawned): the first
    process under the pvinit shims, ``root`` itself when no shim is in use, None when
    the tree is gone or the plugin not started yet. Pids are as this host sees them."""
    pid = root
    for _ in range(4):  # outer shim, inner shim (pid namespace), then the plugin
        if not _is_shim(pid):
            return pid
        try:
            children = psutil.Process(pid).children()
        except (psutil.Error, OSError):  # gone, or out of descriptors (EMFILE)
            return None
        if not children:
            return None
        pid = min(c.pid for c in children) if len(children) > 1 else children[0].pid
    return None


_PF_EXITING = 0x4  # include/linux/sched.h: the task has started to exit


def _running(pid: int) -> bool:
    """Alive and not on its way out (not a zombie, not already in exit)."""
    if IS_LINUX:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return False
        fields = stat[stat.rfind(b")") + 2:].split()
        try:
            state, flags = fields[0], int(fields[6])
        except (IndexError, ValueError):
            return False
        return state not in (b"Z", b"X", b"x") and not flags & _PF_EXITING
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def tree_alive(pid: int) -> bool:
    """Whether a plugin process of the tree (pvinit aside) is alive and not exiting.

    Tells a plugin that closed a pipe and lives on from one whose pipes closed
    because it is exiting, whose exit status is then worth waiting for.
    """
    return any(_running(p) for p in tree_pids(pid) if not _is_shim(p))


def _is_shim(pid: int) -> bool:
    if not _known_shims:
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe") if IS_LINUX else psutil.Process(pid).exe()
    except (OSError, psutil.Error):
        return False
    return exe in _known_shims


def _send(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except (ProcessLookupError, PermissionError):
        return False


def _freeze(roots: Iterable[int], *, skip_shims: bool) -> set[int]:
    """SIGSTOP a tree until a walk finds nothing new, so nothing forks away."""
    stopped: set[int] = set()
    roots = list(roots)
    for _ in range(_FREEZE_PASSES):
        seen: set[int] = set()
        for root in roots:
            seen.update(tree_pids(root))
        for known in stopped:
            seen.update(tree_pids(known))
        new = {p for p in seen - stopped if not (skip_shims and _is_shim(p))}
        if not new:
            break
        for p in new:
            _send(p, signal.SIGSTOP)
        stopped |= new
    return stopped


def kill_tree(pid: int) -> None:
    """SIGKILL the spawned process and everything below it.

    The tree is frozen first because killing a parent reparents its children
    away from us, after which a plain walk could no longer find them.
    """
    victims = _freeze([pid], skip_shims=False)
    if not _is_shim(pid) and _is_group_leader(pid):
        _killpg(pid, signal.SIGKILL)
    for p in victims or {pid}:
        _send(p, signal.SIGKILL)


def pause_tree(pid: int) -> None:
    """SIGSTOP every plugin process, leaving pvinit itself running.

    pvinit must stay responsive: without a namespace it is the one that cleans
    up if the supervisor dies while the plugin is paused.
    """
    _freeze([pid], skip_shims=True)


def resume_tree(pid: int) -> None:
    """SIGCONT every process of the tree."""
    for p in tree_pids(pid):
        _send(p, signal.SIGCONT)


def signal_tree(pid: int, sig: int) -> None:
    """Deliver ``sig`` once to every process of the plugin tree."""
    if sig == signal.SIGKILL:
        kill_tree(pid)
        return
    if sig == signal.SIGSTOP:
        pause_tree(pid)
        return
    if _is_shim(pid):
        if sig in FORWARDED_SIGNALS:
            # pvinit relays it to the namespace / subtree exactly once.
            _send(pid, sig)
            return
        for p in tree_pids(pid):
            if not _is_shim(p):
                _send(p, sig)
        return
    pids = tree_pids(pid)
    if _is_group_leader(pid):
        _killpg(pid, sig)
        for p in pids:
            try:
                in_group = os.getpgid(p) == pid
            except (ProcessLookupError, PermissionError):
                continue
            if not in_group:
                _send(p, sig)
    else:
        for p in pids or [pid]:
            _send(p, sig)


# --------------------------------------------------------------------------- subreaper


def _libc() -> ctypes.CDLL | None:
    if not IS_LINUX:
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def become_subreaper() -> bool:
    """Adopt orphans of our plugins instead of letting init have them (Linux)."""
    libc = _libc()
    if libc is None:
        return False
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("PR_SET_CHILD_SUBREAPER failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def reap_adopted(known: Container[int]) -> list[tuple[int, int]]:
    """Reap adopted zombies by pid, leaving our own spawned children to asyncio.

    waitpid(-1) would steal exit statuses the event loop's child watcher is
    waiting for, so each zombie is reaped individually.  Returns (pid, exit
    code as ``Popen.returncode`` would report it).
    """
    reaped: list[tuple[int, int]] = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return reaped
    for child in children:
        if child.pid in known:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            done, status = os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue
        if done:
            reaped.append((done, os.waitstatus_to_exitcode(status)))
    return reaped

