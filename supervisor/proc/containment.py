"""Process containment: the one module that knows how each OS keeps plugin trees from leaking.

Everything else in the supervisor asks this module how to spawn a plugin
(:func:`wrap_command`) and how to signal, pause or kill the plugin's whole
process tree, so the rest of the codebase never needs to know about prctl, pid
namespaces, process groups or the ``pvinit`` shim.  See
``docs/process-containment.md`` for what each mechanism guarantees.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psutil

from pipevisor.supervisor.proc.leftovers import LeftoverRecord
from pipevisor.supervisor.proc.privileges import PrivilegePlan
from pipevisor.supervisor.proc.rlimits import RLIMIT_IDS
from pipevisor.supervisor.proc.shim import (
    FORWARDED_SIGNALS,
    IS_LINUX,
    TREE_ENV,
    ShimFile,
    ShimRefused,
    _known_shims,
    _shim_cached,
    ensure_shim,
    fd_path,
    sealed_copy,
)
from pipevisor.supervisor.proc.tree import (
    become_subreaper,
    kill_tree,
    pause_tree,
    reap_adopted,
    resume_tree,
    signal_tree,
    tree_alive,
    tree_pids,
)

__all__ = [
    "FORWARDED_SIGNALS",
    "IS_LINUX",
    "TREE_ENV",
    "Containment",
    "LeftoverRecord",
    "become_subreaper",
    "detect_containment",
    "ensure_shim",
    "kill_tree",
    "pause_tree",
    "reap_adopted",
    "reset_detection_cache",
    "resume_tree",
    "set_rlimits_after_spawn",
    "signal_tree",
    "tree_alive",
    "tree_pids",
    "wrap_command",
]

log = logging.getLogger(__name__)


Mechanism = Literal["pidns", "session+pdeathsig", "session"]



_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Containment:
    """What this host can guarantee; decided once and shared by every spawn."""

    mechanism: Mechanism
    shim: str | None
    """What is executed: ``/proc/self/fd/N`` for the sealed copy, else the verified path."""
    detail: str
    shim_fd: int | None = None
    """The sealed memfd ``shim`` names (passed to the child as that same fd number)."""
    shim_source: str | None = None
    """Where the verified file came from: ``packaged``, ``cache`` or ``override``."""
    shim_path: str | None = None
    """The verified file on disk (what ``shim`` is a copy of, when it is a memfd)."""

    def describe(self) -> dict[str, Any]:
        """The containment part of a plugin's status (without privileges)."""
        return {
            "mechanism": self.mechanism,
            "shim": self.shim_path or self.shim,
            "shim_source": self.shim_source,
            "shim_exec": None if self.shim is None else
            ("memfd" if self.shim_fd is not None else "path"),
            "detail": self.detail,
        }


# --------------------------------------------------------------------------- detection


class _ShimUnusable(Exception):
    """The shim binary exists but cannot be executed (noexec mount, wrong format, ...)."""


def _probe_pidns(shim: str, fd: int | None = None) -> tuple[bool, str]:
    """Whether pvinit can have a pid namespace here (and why not); running it is also
    the proof that the binary runs at all, else :class:`_ShimUnusable`."""
    try:
        proc = subprocess.run(
            [shim, "--probe-ns"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            pass_fds=() if fd is None else (fd,),
        )
    except OSError as exc:
        raise _ShimUnusable(f"{shim} cannot run: {exc}") from exc
    except subprocess.SubprocessError as exc:
        return False, f"probe failed: {exc}"
    reason = proc.stderr.strip().removeprefix("pvinit: ")
    if proc.returncode == 0:
        return True, "pid namespace (unshare CLONE_NEWPID)"
    if proc.returncode == 4:
        return True, "user+pid namespace (unprivileged unshare)"
    return False, reason or f"probe exited {proc.returncode}"


#: Whether rlimits can be set on another process (the no-shim fallback needs that).
_CAN_PRLIMIT = hasattr(resource, "prlimit") or hasattr(psutil.Process, "rlimit")

_fallback_warned = False


def _without_shim(why: str) -> Containment:
    """The 'session' fallback, announced by exactly one warning per process."""
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        rlimits = ("kernel rlimits (RLIMIT_CORE=0, the memory and fd backstops) are set "
                   "just after the spawn instead of before the plugin runs"
                   if _CAN_PRLIMIT else
                   f"kernel rlimits (RLIMIT_CORE=0, the memory and fd backstops) are not "
                   f"set at all on {sys.platform}")
        log.warning(
            "no pvinit shim (%s): process containment falls back to 'session' (each plugin "
            "in its own session and process group). Lost: plugins no longer die with the "
            "supervisor if it is killed (with a state_dir, the next start kills them), "
            "a process that calls setsid escapes stop and that cleanup, and %s. "
            "See docs/process-containment.md%s.",
            why, rlimits, "; install gcc to get the shim" if IS_LINUX else "")
    return Containment("session", None, f"no pvinit shim: {why}")


def _probe_sealed(shim: ShimFile) -> tuple[str, int | None, bool, str]:
    """Seal the verified shim into a memfd and probe that copy; where memfd exec is not
    possible, probe the verified path instead (said in one log line). Returns (what to
    exec, its fd or None, namespace ok, detail); raises _ShimUnusable or ShimRefused."""
    try:
        fd: int | None = sealed_copy(shim.path)
    except OSError as exc:
        fd, why = None, f"no sealed copy ({exc})"
    if fd is not None:
        try:
            ok, detail = _probe_pidns(fd_path(fd), fd)
            return fd_path(fd), fd, ok, detail
        except _ShimUnusable as exc:
            why = f"executing the sealed copy failed ({exc})"
    ok, detail = _probe_pidns(shim.path)
    log.warning("pvinit runs from its verified path %s, not from a sealed in-memory copy: "
                "%s; a change to that file on disk would reach the next spawn",
                shim.path, why)
    return shim.path, None, ok, detail


@functools.cache
def _detect(force: str, shim_env: str | None) -> Containment:
    if not IS_LINUX:
        if force == "pidns":
            raise RuntimeError(f"pid namespaces are Linux-only ({sys.platform})")
        return _without_shim(f"pvinit is Linux-only ({sys.platform})")
    found, why = _shim_cached(shim_env)
    if found is None:
        if force == "pidns":
            raise RuntimeError(f"pidns containment needs the pvinit shim: {why}")
        return _without_shim(why)
    try:
        shim, fd, ok, detail = _probe_sealed(found)
    except (_ShimUnusable, ShimRefused) as exc:
        if force == "pidns":
            raise RuntimeError(f"pidns containment needs the pvinit shim: {exc}") from exc
        return _without_shim(str(exc))
    _known_shims.add(os.path.realpath(shim))
    where = f"; pvinit {found.why}" + (", run from a sealed memfd" if fd is not None else "")

    def made(mechanism: Mechanism, text: str) -> Containment:
        return Containment(mechanism, shim, text + where, fd, found.source, found.path)

    if force == "session":
        return made("session+pdeathsig", "pid namespace disabled by configuration")
    if ok:
        return made("pidns", detail)
    if force == "pidns":
        raise RuntimeError(f"pid namespace unavailable: {detail}")
    return made("session+pdeathsig", detail)


def detect_containment(*, force: str | None = None) -> Containment:
    """Pick the strongest mechanism this host supports (cached per setting).

    ``force`` is ``"auto"`` (default), ``"pidns"`` (raise RuntimeError if it is
    unavailable, so a misconfiguration is loud) or ``"session"`` (never use a
    namespace).
    """
    mode = force or "auto"
    if mode not in ("auto", "pidns", "session"):
        raise ValueError(f"unknown containment mode {force!r}")
    return _detect(mode, os.environ.get("PIPEVISOR_SHIM"))


def reset_detection_cache() -> None:
    """Forget detection results, e.g. after a test changed PIPEVISOR_SHIM."""
    global _fallback_warned
    _detect.cache_clear()
    _shim_cached.cache_clear()
    _fallback_warned = False


def wrap_command(argv: Sequence[str], containment: Containment,
                 rlimits: Mapping[str, int] | None = None,
                 privileges: PrivilegePlan | None = None) -> tuple[list[str], dict[str, Any]]:
    """Turn a plugin argv into what to exec plus spawn kwargs.

    The kwargs only contain options both ``anyio.open_process`` and
    ``subprocess.Popen`` accept; the plugin always gets its own session so a
    terminal's Ctrl-C reaches the supervisor alone, which then decides.  Must be
    called from a long-lived thread: PR_SET_PDEATHSIG fires when the *thread*
    that forked the shim exits.

    ``rlimits`` (short name -> value, see ``pipevisor.supervisor.proc.rlimits.RLIMIT_IDS``) are set
    in the plugin just before exec by pvinit when there is a shim (so the shim
    itself stays unconstrained). Without one they are ignored here: the caller
    sets them right after the spawn with :func:`set_rlimits_after_spawn` (no
    ``preexec_fn``: ``anyio.open_process`` does not take one, and it is unsafe
    with threads).

    ``privileges`` (from :func:`.privileges.plan_privileges` for this containment):
    with the shim, pvinit drops them in the plugin before exec; without it, user and
    group are set by ``subprocess`` itself and no_new_privs by ``setpriv`` where
    the plan found one.
    """
    if not argv:
        raise ValueError("empty plugin command")
    kwargs: dict[str, Any] = {"start_new_session": True}
    if containment.shim is None:
        if privileges is None:
            return list(argv), kwargs
        kwargs.update(privileges.spawn_kwargs())
        return [*privileges.exec_prefix(), *argv], kwargs
    _known_shims.add(os.path.realpath(containment.shim))
    if containment.shim_fd is not None:
        kwargs["pass_fds"] = (containment.shim_fd,)  # pvinit closes it first thing
    mode = "--ns" if containment.mechanism == "pidns" else "--no-ns"
    flags = [f for name, value in (rlimits or {}).items()
             for f in ("--rlimit", f"{name}={int(value)}")]
    if privileges is not None:
        flags += privileges.shim_flags()
    return [containment.shim, mode, "--parent", str(os.getpid()), *flags, "--", *argv], kwargs


def _lower_rlimit(pid: int, which: int, value: int) -> None:
    if hasattr(resource, "prlimit"):  # Linux
        hard = resource.prlimit(pid, which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.prlimit(pid, which, (value, value))
        return
    proc = psutil.Process(pid)  # FreeBSD
    hard = proc.rlimit(which)[1]
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    proc.rlimit(which, (value, value))


def set_rlimits_after_spawn(pid: int, containment: Containment,
                            rlimits: Mapping[str, int] | None) -> None:
    """Without the shim, lower the just-spawned plugin's rlimits from outside.

    Call it right after the spawn returns. The plugin has been running since its
    exec, so there is a window (typically well under a millisecond, longer when
    the event loop is busy) in which it runs with the supervisor's limits;
    docs/process-containment.md has the figures. With a shim this does nothing:
    pvinit set them before exec. Limits are only lowered (at most to the hard
    limit the plugin already has). A plugin already gone is left to the exit
    watcher; any other failure is logged, the plugin keeps running.
    """
    if containment.shim is not None or not rlimits or not _CAN_PRLIMIT:
        return
    for name, value in rlimits.items():
        try:
            _lower_rlimit(pid, RLIMIT_IDS[name], int(value))
        except (ProcessLookupError, psutil.NoSuchProcess):
            return
        except (OSError, psutil.Error) as exc:
            log.warning("cannot set rlimit %s=%d on plugin pid %d: %s", name, value, pid, exc)


