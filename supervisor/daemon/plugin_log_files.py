"""One log file per plugin, rotated: ``[daemon] plugin_log_dir``.

The daemon's own log (stderr, or the journal under systemd) holds every plugin's lines
tagged ``[name]``; an operator who wants one plugin's history in a file of its own, or
keeps no journal, sets a folder and gets ``NAME.log`` there, rotated by size. The
folder must pass the runtime-dir rule (ours, not a symlink, closed to other writers),
so nobody else can plant a symlink where a log file will be opened. Files are opened on
a plugin's first line and at most ``MAX_OPEN`` stay open (the least recently written
are closed first), so thousands of plugins cannot take thousands of descriptors.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from collections import OrderedDict

from pipevisor.supervisor import paths
from pipevisor.supervisor.text import printable

__all__ = ["MAX_OPEN", "PluginLogFiles"]

MAX_OPEN = 64
"""Plugin log files kept open at once."""

_PREFIX = "pipevisor.plugin."


class _FileFormatter(logging.Formatter):
    """``YYYY-MM-DD HH:MM:SS.mmm LEVEL message``, one record one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{ts}.{int(record.msecs):03d} {record.levelname:<7} " \
               f"{printable(record.getMessage())}"


class PluginLogFiles(logging.Handler):
    """Routes ``pipevisor.plugin.NAME`` records to ``NAME.log`` in ``folder``."""

    def __init__(self, folder: str, max_bytes: int, backups: int,
                 max_open: int = MAX_OPEN) -> None:
        super().__init__()
        self.folder = paths.secure_dir(folder, what="[daemon] plugin_log_dir")
        self.max_bytes = max_bytes
        self.backups = backups
        self.max_open = max_open
        self._files: OrderedDict[str, logging.handlers.RotatingFileHandler] = OrderedDict()
        self._formatter = _FileFormatter()

    def _file_of(self, plugin: str) -> logging.handlers.RotatingFileHandler:
        handler = self._files.get(plugin)
        if handler is not None:
            self._files.move_to_end(plugin)
            return handler
        handler = logging.handlers.RotatingFileHandler(
            os.path.join(self.folder, f"{plugin}.log"), maxBytes=self.max_bytes,
            backupCount=self.backups, encoding="utf-8", delay=True)
        handler.setFormatter(self._formatter)
        self._files[plugin] = handler
        while len(self._files) > self.max_open:
            _, oldest = self._files.popitem(last=False)
            oldest.close()
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if not name.startswith(_PREFIX):
            return
        plugin = name[len(_PREFIX):]
        # plugin names are checked at load (NAME_RE); a path separator would be a bug
        if not plugin or "/" in plugin or plugin in (".", ".."):
            return
        try:
            self._file_of(plugin).emit(record)
        except Exception:  # a full disk must not take the daemon down
            self.handleError(record)

    def close(self) -> None:
        for handler in self._files.values():
            handler.close()
        self._files.clear()
        super().close()


def install(folder: str | None, max_bytes: int, backups: int) -> PluginLogFiles | None:
    """Replace the plugin log files handler (None: remove it); raises
    :class:`~pipevisor.supervisor.paths.UnsafeRuntimeDir` for a folder that fails the rule."""
    logger = logging.getLogger(_PREFIX.rstrip("."))
    new = PluginLogFiles(folder, max_bytes, backups) if folder else None
    for old in [h for h in logger.handlers if isinstance(h, PluginLogFiles)]:
        logger.removeHandler(old)
        old.close()
    if new is not None:
        logger.addHandler(new)
    return new
