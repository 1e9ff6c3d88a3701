"""A ``logging`` handler that turns records into ``pipevisor/log`` notifications.

Before the handshake answer (and after the host is gone) records go to stderr
as plain text, which the host also collects: the protocol only allows log
notifications before the handshake, and a plugin that logs while starting up
should not depend on the handshake having happened.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from pipevisor.kit.plugin import LEVELS

if TYPE_CHECKING:
    from pipevisor.kit.plugin import Plugin


def level_name(levelno: int) -> str:
    """Python's levels onto RFC 5424 names (custom levels fall to the one below)."""
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class HostLogHandler(logging.Handler):
    """Sends each record to the host; thread-safe because the plugin's writer is."""

    def __init__(self, plugin: Plugin) -> None:
        super().__init__()
        self._plugin = plugin
        self._stderr = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        self.min_rank = plugin._min_log_rank  # index into LEVELS: capabilities.log.minLevel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = level_name(record.levelno)
            if not self._plugin.connected:
                sys.stderr.write(self._stderr.format(record) + "\n")
                sys.stderr.flush()
                return
            if LEVELS.index(name) < self.min_rank:
                return
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self._stderr.formatException(record.exc_info)
            params: dict[str, Any] = {"level": name, "message": message}
            if record.name != "root":
                params["logger"] = record.name
            self._plugin._notify("pipevisor/log", params)
        except Exception:  # logging must never take the plugin down
            self.handleError(record)
