"""Plugins a previous supervisor left running: recorded on disk at spawn, killed at
the next start when the kernel did not clean up (no pid namespace)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
from pathlib import Path

import psutil

from pipevisor.supervisor.proc.shim import TREE_ENV
from pipevisor.supervisor.proc.tree import _freeze, _send

log = logging.getLogger(__name__)

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

