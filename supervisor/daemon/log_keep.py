"""Each plugin's stderr tail kept across daemon restarts (#19): ``pipevisor logs NAME``
after a restart still shows what the plugin wrote before it, marked as from the
previous daemon run.

When the daemon stops (after every plugin has stopped, so their last words are in),
each plugin's tail is written to ``<state dir>/stderr-tail.<name>.json``; when a
plugin of that name is loaded again, the file is read once and its lines are put
before the new ones. Only the daemon's stop writes: the tail is already bounded in
memory, and writing every plugin's tail (up to ``stderr_tail_bytes`` each) on a
timer or at every exit would cost I/O proportional to the noisiest plugins for the one
case it helps (the daemon killed outright), where the journal has the lines anyway.

The state dir is private and ours (``paths.secure_dir``) but a file in it is still
read as untrusted: opened with O_NOFOLLOW and checked to be a regular file of ours
not writable by others (``paths.open_private``), refused past a size computed from the
plugin's own tail bounds, and ignored with one warning when it is not what this
module writes. Nothing here raises into the daemon. Files are written like
``children.json``: a 0600 temporary file in the same folder, then an atomic rename.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from pipevisor.supervisor.paths import open_private

log = logging.getLogger("pipevisor.daemon")

PREFIX = "stderr-tail."
SUFFIX = ".json"
VERSION = 1


def path_for(state_dir: str, name: str) -> str:
    """Plugin names are ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (engine/config.py): no slash, and
    never ``.`` or ``..``, so the name is safe in a file name as it is."""
    return os.path.join(state_dir, f"{PREFIX}{name}{SUFFIX}")


def max_file_bytes(tail_lines: int, tail_bytes: int) -> int:
    """The largest file a tail of these bounds makes: each character escaped in JSON at
    worst (6 bytes), plus the time, instance and flag of each line."""
    return 6 * tail_bytes + 64 * tail_lines + 4096


def save(state_dir: str, name: str, rows: list[list[Any]], limit: int) -> bool:
    """Write ``name``'s rows (``Supervisor.log_export``), the newest that fit in
    ``limit`` bytes. False (and a warning) when it could not be written."""
    try:
        data = orjson.dumps({"version": VERSION, "plugin": name, "saved": time.time(),
                             "lines": rows})
        while len(data) > limit and rows:
            rows = rows[len(rows) // 4 or 1:]
            data = orjson.dumps({"version": VERSION, "plugin": name, "saved": time.time(),
                                 "lines": rows})
        fd, tmp = tempfile.mkstemp(prefix=f".{PREFIX}{name}.", dir=state_dir)  # 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path_for(state_dir, name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, TypeError, ValueError) as exc:
        log.warning("could not keep plugin %s's stderr tail in %s: %s", name, state_dir, exc)
        return False
    return True


def load(state_dir: str, name: str, limit: int) -> list[Any] | None:
    """The rows kept for ``name`` by an earlier run; None when there is no file, and
    (with one warning) when it is unsafe, too large or not what :func:`save` writes."""
    path = path_for(state_dir, name)
    try:
        fd = open_private(path, os.O_RDONLY | os.O_NONBLOCK, what="a kept stderr tail")
    except FileNotFoundError:
        return None
    except Exception as exc:  # a symlink, a fifo, another owner, EACCES ...
        log.warning("ignoring %s: %s", path, exc)
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                log.warning("ignoring %s: %d bytes, more than the %d this plugin's stderr "
                            "tail can make", path, size, limit)
                return None
            raw = fh.read(limit + 1)
        if len(raw) > limit:
            log.warning("ignoring %s: larger than the %d bytes this plugin's stderr tail "
                        "can make", path, limit)
            return None
        data = orjson.loads(raw)
        if (not isinstance(data, dict) or data.get("version") != VERSION
                or data.get("plugin") != name or not isinstance(data.get("lines"), list)):
            log.warning("ignoring %s: not a version %d stderr tail of plugin %s", path,
                        VERSION, name)
            return None
        lines: list[Any] = data["lines"]
        return lines
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None


def prune(state_dir: str, keep: Iterable[str]) -> None:
    """Remove the kept tails of plugins not in ``keep`` (no longer loaded), so the
    state dir holds at most one file per plugin the daemon runs."""
    wanted = {f"{PREFIX}{name}{SUFFIX}" for name in keep}
    try:
        names = os.listdir(state_dir)
    except OSError:
        return
    for entry in names:
        if entry.startswith(PREFIX) and entry.endswith(SUFFIX) and entry not in wanted:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(state_dir, entry))


class LogKeeper:
    """The daemon's side: seed a plugin once per run, save every plugin at the stop."""

    def __init__(self, state_dir: str | None) -> None:
        self.state_dir = state_dir
        self._seeded: set[str] = set()

    def seed(self, name: str, seed: Callable[[str, list[Any]], int],
             bounds: tuple[int, int]) -> int:
        """Load ``name``'s file (the first time the name is loaded in this run) and hand
        its rows to ``seed`` (``Supervisor.seed_log``); how many lines were kept."""
        if self.state_dir is None or name in self._seeded:
            return 0
        self._seeded.add(name)
        rows = load(self.state_dir, name, max_file_bytes(*bounds))
        if not rows:
            return 0
        try:
            return seed(name, rows)
        except Exception as exc:  # e.g. unloaded meanwhile: the lines are not worth a crash
            log.warning("could not restore plugin %s's stderr tail: %s", name, exc)
            return 0

    def save(self, exports: dict[str, tuple[Callable[[], list[list[Any]]], tuple[int, int]]]
             ) -> None:
        """Write each plugin's tail (export function, tail bounds) and drop the files
        of plugins no longer loaded."""
        if self.state_dir is None:
            return
        for name, (export, bounds) in exports.items():
            try:
                rows = export()
            except Exception as exc:
                log.warning("could not read plugin %s's stderr tail: %s", name, exc)
                continue
            save(self.state_dir, name, rows, max_file_bytes(*bounds))
        prune(self.state_dir, exports)
