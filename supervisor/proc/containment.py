"""Process containment: the one module that knows how each OS keeps plugin trees from leaking.

Everything else in the supervisor asks this module how to spawn a plugin
(:func:`wrap_command`) and how to signal, pause or kill the plugin's whole
process tree, so the rest of the codebase never needs to know about prctl, pid
namespaces, process groups or the ``pvinit`` shim.  See
``docs/process-containment.md`` for what each mechanism guarantees.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from pipevisor.supervisor.proc.rlimits import RLIMIT_IDS

__all__ = [
    "FORWARDED_SIGNALS",
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

IS_LINUX = sys.platform.startswith("linux")

Mechanism = Literal["pidns", "session+pdeathsig", "session"]

#: Signals pvinit relays to the whole plugin tree (keep in sync with pvinit.c).
FORWARDED_SIGNALS: frozenset[int] = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCONT,
        signal.SIGWINCH,
    }
)

#: Environment variable pvinit sets in the plugin; descendants inherit it, which
#: is how leftover cleanup recognises processes that escaped their session.
TREE_ENV = "PIPEVISOR_TREE"

_SHIM_SOURCE = Path(__file__).with_name("native") / "pvinit.c"
_CFLAGS = ("-O2", "-Wall", "-Werror")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# Convergence bound for freeze loops: a tree that keeps producing new processes
# faster than we can stop them is still killed, just not atomically.
_FREEZE_PASSES = 50


@dataclass(frozen=True)
class Containment:
    """What this host can guarantee; decided once and shared by every spawn."""

    mechanism: Mechanism
    shim: str | None
    detail: str


# --------------------------------------------------------------------------- shim


_known_shims: set[str] = set()


def _cache_dir() -> Path:
    explicit = os.environ.get("PIPEVISOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pipevisor"


def _find_compiler() -> str | None:
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _packaged_shim(digest: str) -> str | None:
    """The pvinit built into the wheel (setup.py), if it was built from this source.

    An installed package compiles nothing at run time, and its shim lives where the
    package does (root-owned for a system install), not in a cache dir the plugins'
    user can write. A checkout has none and uses the compiled cache below."""
    binary = _SHIM_SOURCE.with_name("pvinit")
    try:
        built_from = _SHIM_SOURCE.with_name("pvinit.sha256").read_text().strip()
    except OSError:
        return None
    if built_from != digest or not os.access(binary, os.X_OK):
        log.warning("ignoring %s: built from another source or flags (%s, want %s)",
                    binary, built_from, digest)
        return None
    return str(binary)


def _build_shim() -> tuple[str | None, str]:
    """Return (path, why) so detection can explain a missing shim."""
    override = os.environ.get("PIPEVISOR_SHIM")
    if override == "0":
        return None, "PIPEVISOR_SHIM=0"
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return os.path.realpath(override), f"PIPEVISOR_SHIM={override}"
        return None, f"PIPEVISOR_SHIM={override} is not an executable file"
    if not IS_LINUX:
        return None, f"pvinit is Linux-only ({sys.platform})"
    try:
        source = _SHIM_SOURCE.read_bytes()
    except OSError as exc:
        return None, f"pvinit source missing: {exc}"
    digest = hashlib.sha256(source + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    packaged = _packaged_shim(digest)
    if packaged is not None:
        return packaged, "built with the package"
    cache = _cache_dir()
    target = cache / f"pvinit-{digest}"
    if os.access(target, os.X_OK):
        return str(target), f"cached {target.name}"
    compiler = _find_compiler()
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pvinit-", dir=cache)
        os.close(fd)
    except OSError as exc:
        return None, f"cache dir {cache} unusable: {exc}"
    try:
        proc = subprocess.run(
            [compiler, *_CFLAGS, "-o", tmp, str(_SHIM_SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            log.debug("compiling pvinit failed: %s", proc.stderr.strip())
            return None, f"compiling it failed: {proc.stderr.strip()[:200]}"
        os.chmod(tmp, 0o755)
        # Atomic: concurrent supervisors either see no file or a whole one.
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"compiling it failed: {exc}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return str(target), f"compiled {target.name}"


@functools.cache
def _shim_cached(override: str | None) -> tuple[str | None, str]:
    path, why = _build_shim()
    if path is not None:
        _known_shims.add(os.path.realpath(path))
    return path, why


def ensure_shim() -> str | None:
    """Compile pvinit once per source version; None means we must do without it."""
    return _shim_cached(os.environ.get("PIPEVISOR_SHIM"))[0]


# --------------------------------------------------------------------------- detection


class _ShimUnusable(Exception):
    """The shim binary exists but cannot be executed (noexec mount, wrong format, ...)."""


def _probe_pidns(shim: str) -> tuple[bool, str]:
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


@functools.cache
def _detect(force: str, shim_env: str | None) -> Containment:
    if not IS_LINUX:
        if force == "pidns":
            raise RuntimeError(f"pid namespaces are Linux-only ({sys.platform})")
        return _without_shim(f"pvinit is Linux-only ({sys.platform})")
    shim, why = _shim_cached(shim_env)
    if shim is None:
        if force == "pidns":
            raise RuntimeError(f"pidns containment needs the pvinit shim: {why}")
        return _without_shim(why)
    try:
        ok, detail = _probe_pidns(shim)
    except _ShimUnusable as exc:
        if force == "pidns":
            raise RuntimeError(f"pidns containment needs the pvinit shim: {exc}") from exc
        return _without_shim(str(exc))
    if force == "session":
        return Containment("session+pdeathsig", shim, "pid namespace disabled by configuration")
    if ok:
        return Containment("pidns", shim, detail)
    if force == "pidns":
        raise RuntimeError(f"pid namespace unavailable: {detail}")
    return Containment("session+pdeathsig", shim, detail)


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
                 rlimits: Mapping[str, int] | None = None) -> tuple[list[str], dict[str, Any]]:
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
    """
    if not argv:
        raise ValueError("empty plugin command")
    kwargs: dict[str, Any] = {"start_new_session": True}
    if containment.shim is None:
        return list(argv), kwargs
    _known_shims.add(os.path.realpath(containment.shim))
    mode = "--ns" if containment.mechanism == "pidns" else "--no-ns"
    flags = [f for name, value in (rlimits or {}).items()
             for f in ("--rlimit", f"{name}={int(value)}")]
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


# --------------------------------------------------------------------------- tree operations


def tree_pids(pid: int) -> list[int]:
    """Return ``pid`` followed by all its live descendants; [] if it is gone."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    return [pid, *(c.pid for c in children)]


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


# --------------------------------------------------------------------------- leftovers


def _same_start(a: float, b: float) -> bool:
    # create_time has clock-tick (10 ms) resolution; anything closer is the same process.
    return abs(a - b) < 0.005


class LeftoverRecord:
    """Remember spawned plugins on disk so the next start can kill what survived us.

    Needed whenever the kernel does not clean up for us: no pid namespace and
    the shim's cleanup could not run, or no shim at all.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _load(self) -> dict[int, float]:
        try:
            raw = json.loads(self.path.read_text())
            return {int(k): float(v) for k, v in raw.get("children", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("ignoring unreadable leftover record %s: %s", self.path, exc)
            return {}

    def _save(self, entries: dict[int, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": 1, "children": {str(k): v for k, v in entries.items()}})
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def entries(self) -> dict[int, float]:
        """Recorded pid -> create_time."""
        return self._load()

    def record(self, pid: int, create_time: float | None = None, *,
               spawned_at: float | None = None) -> None:
        """Remember a spawned pid; create_time defaults to the live process's.

        A plugin that exits at once may already be reaped when this runs; then
        ``spawned_at`` (wall time taken just before the spawn, a lower bound of the
        real start) stands in, so that strays in its session or group are still
        found next time; without it nothing is recorded.
        """
        if create_time is None:
            try:
                create_time = psutil.Process(pid).create_time()
            except psutil.Error:
                if spawned_at is None:
                    return
                create_time = spawned_at
        entries = self._load()
        entries[pid] = create_time
        self._save(entries)

    def forget(self, pid: int) -> None:
        entries = self._load()
        if entries.pop(pid, None) is not None:
            self._save(entries)

    def cleanup(self) -> list[int]:
        """Kill everything a previous instance left running; return the pids killed.

        A recorded pid counts only if it still has the recorded start time (pid
        reuse).  Besides the recorded tree, processes still in its session or
        process group, or carrying the pvinit tree tag, that started after it
        are taken too: those are children orphaned when the tree was torn apart.
        """
        entries = self._load()
        if not entries:
            return []
        me = os.getpid()
        my_session = os.getsid(0)
        roots: set[int] = set()
        for pid, started in entries.items():
            try:
                if _same_start(psutil.Process(pid).create_time(), started):
                    roots.add(pid)
            except psutil.Error:
                pass
        stray_owner: dict[int, float] = {
            pid: started for pid, started in entries.items() if pid in roots or not _pid_alive(pid)
        }
        for proc in psutil.process_iter(["pid", "create_time"]):
            pid = proc.info["pid"]
            if pid == me or pid in roots or _session_of(pid) == my_session:
                continue
            owner = _stray_owner(proc, stray_owner)
            if owner is not None:
                roots.add(pid)
        killed: set[int] = set()
        if roots:
            victims = _freeze(roots, skip_shims=False)
            for p in victims:
                if p != me and _send(p, signal.SIGKILL):
                    killed.add(p)
        self._save({})
        return sorted(killed)


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stray_owner(proc: psutil.Process, owners: dict[int, float]) -> int | None:
    """Which recorded tree (if any) an unrelated-looking process belongs to."""
    started = proc.info["create_time"]
    if started is None:
        return None
    try:
        ids = {os.getsid(proc.pid), os.getpgid(proc.pid)}
    except OSError:
        ids = set()
    for owner, owner_start in owners.items():
        if owner in ids and started + 0.005 >= owner_start:
            return owner
    try:
        tag = proc.environ().get(TREE_ENV)
    except (psutil.Error, OSError):
        return None
    if tag is None:
        return None
    try:
        owner = int(tag)
    except ValueError:
        return None
    if owner in owners and started + 0.005 >= owners[owner]:
        return owner
    return None
