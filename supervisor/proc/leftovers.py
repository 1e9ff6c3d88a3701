"""Plugins a previous supervisor left running: recorded on disk at spawn, killed at
the next start when the kernel did not clean up (no pid namespace).

Only what is proven ours is killed (#14 item 4):

* one instance per state dir: :func:`claim_state_dir` takes an exclusive ``flock`` on
  ``<state dir>/pipevisor.lock`` and holds it for the life of the process, so a second
  daemon on the same state dir is refused before it reads a record, and only the
  holder ever writes ``children.json``. The kernel drops the lock when its holder
  dies, however it dies: a stale lock file never blocks a new start;
* ``children.json`` names the instance that wrote it (a random id, its pid, start time
  and boot id) and records per tree: root pid, start time, boot id (the kernel's
  ``/proc/sys/kernel/random/boot_id``), uid and, when the spawner put one in the
  plugin's environment (``PIPEVISOR_TREE_TOKEN``), a random per-tree token;
* a recorded root is killed, with its descendants, only when a live process has the
  same pid, start time, boot and uid. Processes outside that tree (orphans of a torn
  tree) are killed only when they run as the recorded uid, started after the recorded
  root on the same boot, and carry the tree's token (or, for a tree recorded without
  one, the pvinit tag ``PIPEVISOR_TREE=<root pid>`` and no other daemon's
  ``PIPEVISOR_HOST_PID``), or are in the session or process group of a *live,
  verified* root. The group or session number of a dead pid is never used: that pid
  may belong to anyone by now.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from pipevisor.supervisor.errors import PipevisorError
from pipevisor.supervisor.paths import UnsafeRuntimeDir, open_private, secure_dir
from pipevisor.supervisor.proc.shim import TREE_ENV
from pipevisor.supervisor.proc.tree import _freeze, _send

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "TREE_TOKEN_ENV", "LeftoverRecord", "StateDirBusy", "TreeRecord",
           "boot_id", "claim_state_dir", "instance_id", "new_tree_token"]

TREE_TOKEN_ENV = "PIPEVISOR_TREE_TOKEN"
"""A random token per plugin tree, put in the plugin's environment by the spawner and
inherited by everything it starts: what proves an orphan belongs to a recorded tree."""

HOST_PID_ENV = "PIPEVISOR_HOST_PID"
LOCK_NAME = "pipevisor.lock"
VERSION = 2

_INSTANCE = secrets.token_hex(16)


def instance_id() -> str:
    """This process's random instance id, as written in the records it keeps."""
    return _INSTANCE


def new_tree_token() -> str:
    """A fresh random tree token for ``TREE_TOKEN_ENV`` (128 bits)."""
    return secrets.token_hex(16)


def boot_id() -> str | None:
    """The kernel's id of this boot (Linux), so records of a previous boot are void."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _same_start(a: float, b: float) -> bool:
    # create_time has clock-tick (10 ms) resolution; anything closer is the same process.
    return abs(a - b) < 0.005


class StateDirBusy(PipevisorError):
    """Another live instance holds the state dir's lock."""


@dataclass
class _Lock:
    path: str
    fd: int


_held: dict[str, _Lock] = {}
"""Locks this process holds, by real path of the lock file (a second ``claim`` in the
same process shares the first: ``flock`` would conflict with our own other fd)."""


def claim_state_dir(state_dir: str | os.PathLike[str]) -> str:
    """Check ``state_dir`` (:func:`pipevisor.supervisor.paths.secure_dir`, created 0700
    if missing) and take its instance lock for the life of this process. Returns the
    lock file's path. Raises :class:`StateDirBusy` naming the holder when another live
    process has it, :class:`UnsafeRuntimeDir` when the folder or lock file is unsafe."""
    folder = secure_dir(os.fspath(state_dir), what="the state directory")
    path = os.path.join(os.path.realpath(folder), LOCK_NAME)
    if path in _held:
        return path
    fd = open_private(path, os.O_RDWR | os.O_CREAT, what="the instance lock file")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _lock_holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise UnsafeRuntimeDir(f"{path}: cannot lock the state directory: "
                                   f"{exc.strerror or exc}") from None
        raise StateDirBusy(
            f"state directory {folder} is in use by another pipevisor instance"
            f"{holder}: it holds {path}; stop it first, or give this one another "
            "supervisor.state_dir (and --socket)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "instance": _INSTANCE}).encode(), 0)
    _held[path] = _Lock(path, fd)
    return path


def _lock_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f" (pid {int(data['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _release_all_for_tests() -> None:
    """Drop every lock this process holds (tests that play two instances in one process)."""
    for lock in _held.values():
        os.close(lock.fd)
    _held.clear()


@dataclass(frozen=True)
class TreeRecord:
    """What identifies one recorded plugin tree."""

    pid: int
    start: float
    boot_id: str | None
    uid: int
    token: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start, "boot_id": self.boot_id, "uid": self.uid,
                "token": self.token}


def _instance_facts() -> dict[str, Any]:
    try:
        start = psutil.Process(os.getpid()).create_time()
    except psutil.Error:
        start = None
    return {"id": _INSTANCE, "pid": os.getpid(), "start": start, "boot_id": boot_id()}


class LeftoverRecord:
    """Remember spawned plugins on disk so the next start can kill what survived us.

    Needed whenever the kernel does not clean up for us: no pid namespace and
    the shim's cleanup could not run, or no shim at all. The file lives in a state
    dir that must be ours (checked), and is used only under the state dir's instance
    lock (:func:`claim_state_dir`, taken by the first call here).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._instance: dict[str, Any] | None = None

    def _claim(self) -> None:
        claim_state_dir(self.path.parent)

    def _read(self) -> dict[str, Any]:
        try:
            fd = open_private(str(self.path), os.O_RDONLY, what="the leftover record")
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            log.warning("ignoring unreadable leftover record %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION:
            log.warning("ignoring leftover record %s: not a version %d record (written by "
                        "another pipevisor version?); nothing recorded there is killed",
                        self.path, VERSION)
            return {}
        return data

    def _trees(self, data: dict[str, Any]) -> dict[int, TreeRecord]:
        out: dict[int, TreeRecord] = {}
        try:
            for key, t in dict(data.get("trees") or {}).items():
                token = t.get("token")
                out[int(key)] = TreeRecord(int(key), float(t["start"]), t.get("boot_id"),
                                           int(t["uid"]), str(token) if token else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring malformed leftover record %s: %s", self.path, exc)
            return {}
        return out

    def _save(self, trees: dict[int, TreeRecord]) -> None:
        if self._instance is None:
            self._instance = _instance_facts()
        data = json.dumps({"version": VERSION, "instance": self._instance,
                           "trees": {str(k): v.as_json() for k, v in trees.items()}})
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def trees(self) -> dict[int, TreeRecord]:
        """Recorded pid -> its identity."""
        self._claim()
        return self._trees(self._read())

    def entries(self) -> dict[int, float]:
        """Recorded pid -> create_time."""
        return {pid: t.start for pid, t in self.trees().items()}

    def record(self, pid: int, create_time: float | None = None, *,
               spawned_at: float | None = None, token: str | None = None) -> None:
        """Remember a spawned pid; create_time and uid default to the live process's.

        A plugin that exits at once may already be reaped when this runs; then
        ``spawned_at`` (wall time taken just before the spawn, a lower bound of the
        real start) stands in, so that its tagged orphans are still found next time;
        without it nothing is recorded. ``token`` defaults to the ``TREE_TOKEN_ENV``
        the spawner put in the process's environment, if any.
        """
        self._claim()
        uid = os.geteuid()
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if create_time is None:
                    create_time = proc.create_time()
                uid = proc.uids().real
                if token is None:
                    with contextlib.suppress(psutil.Error, OSError):
                        token = proc.environ().get(TREE_TOKEN_ENV)
        except psutil.Error:
            if create_time is None:
                if spawned_at is None:
                    return
                create_time = spawned_at
        trees = self._trees(self._read())
        trees[pid] = TreeRecord(pid, create_time, boot_id(), uid, token)
        self._save(trees)

    def forget(self, pid: int) -> None:
        self._claim()
        trees = self._trees(self._read())
        if trees.pop(pid, None) is not None:
            self._save(trees)

    def cleanup(self) -> list[int]:
        """Kill everything a previous instance left running; return the pids killed.

        Takes the state dir's instance lock first (:class:`StateDirBusy` if another
        instance holds it). A recorded root counts only if a live process still has
        its pid, start time, boot and uid; it is killed with all its descendants and
        whatever is still in its session or process group. Orphans of a torn tree
        are found by the tree's token (see the module's docstring).
        """
        self._claim()
        data = self._read()
        trees = self._trees(data)
        if not trees:
            return []
        found = data.get("instance")
        writer: dict[str, Any] = found if isinstance(found, dict) else {}
        if writer.get("id") == _INSTANCE:
            return []  # our own live plugins, not leftovers
        if _instance_alive(writer):
            log.warning("leftover record %s was written by a pipevisor instance that still "
                        "runs (pid %s): its plugins are left alone", self.path,
                        writer.get("pid"))
            return []
        boot = boot_id()
        trees = {p: t for p, t in trees.items() if t.boot_id == boot}
        me = os.getpid()
        my_session = os.getsid(0)
        roots = {pid for pid, t in trees.items() if _is_same_process(t)}
        host_pid = writer.get("pid")
        strays: set[int] = set()
        for proc in psutil.process_iter(["pid", "create_time", "uids"]):
            pid = proc.info["pid"]
            if pid == me or pid in roots or _session_of(pid) == my_session:
                continue
            if _stray_owner(proc, trees, roots, host_pid) is not None:
                strays.add(pid)
        killed: set[int] = set()
        if roots or strays:
            victims = _freeze(roots | strays, skip_shims=False)
            for p in victims:
                if p != me and _send(p, signal.SIGKILL):
                    killed.add(p)
        self._save({})
        return sorted(killed)


def _instance_alive(writer: dict[str, Any]) -> bool:
    try:
        pid, start = int(writer["pid"]), float(writer["start"])
    except (KeyError, TypeError, ValueError):
        return False
    if writer.get("boot_id") != boot_id() or pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        return _same_start(proc.create_time(), start) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_same_process(t: TreeRecord) -> bool:
    """A live process with the recorded pid, start time and uid (boot checked by caller)."""
    try:
        proc = psutil.Process(t.pid)
        with proc.oneshot():
            return (_same_start(proc.create_time(), t.start) and proc.uids().real == t.uid
                    and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _stray_owner(proc: psutil.Process, trees: dict[int, TreeRecord], live_roots: set[int],
                 host_pid: object) -> int | None:
    """Which recorded tree (if any) a process outside the live trees belongs to."""
    started = proc.info["create_time"]
    uids = proc.info["uids"]
    if started is None or uids is None:
        return None
    candidates = [t for t in trees.values()
                  if t.uid == uids.real and started + 0.005 >= t.start]
    if not candidates:
        return None
    live = [t for t in candidates if t.pid in live_roots]
    if live:
        try:
            ids = {os.getsid(proc.pid), os.getpgid(proc.pid)}
        except OSError:
            ids = set()
        for t in live:
            if t.pid in ids:
                return t.pid
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    token = env.get(TREE_TOKEN_ENV)
    if token:
        return next((t.pid for t in candidates if t.token is not None
                     and secrets.compare_digest(t.token, token)), None)
    # A tree recorded without a token (a spawner that does not set one): pvinit's tag
    # names the tree's outer pid; a tag from another daemon's tree is told apart by
    # that daemon's pid in the environment.
    tag = env.get(TREE_ENV)
    other_host = env.get(HOST_PID_ENV)
    if tag is None or (other_host is not None and other_host != str(host_pid)):
        return None
    for t in candidates:
        if t.token is None and tag == str(t.pid) and not _reused_before(t, started):
            return t.pid
    return None


def _reused_before(t: TreeRecord, started: float) -> bool:
    """Whether the recorded pid now belongs to another process, older than the one
    tagged with it (which then more likely descends from that newer process)."""
    try:
        now = psutil.Process(t.pid).create_time()
    except psutil.Error:
        return False
    return not _same_start(now, t.start) and now <= started + 0.005
