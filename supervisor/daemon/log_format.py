"""How the daemon's log lines look: text for a terminal, ``<N>`` priorities for the
journal, one JSON object per line for shippers. A plugin's own lines (its stderr,
``pipevisor/log``) arrive on ``pipevisor.plugin.<name>`` loggers and are tagged.

Messages often carry plugin text (its log lines, its error messages), so the text and
journal formats escape control characters (:func:`pipevisor.supervisor.text.printable`):
one record is one line, whatever a plugin writes. The JSON format is exact."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

from pipevisor.supervisor.daemon.config_file import LogFormat
from pipevisor.supervisor.text import printable

_JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                     logging.ERROR: 3, logging.CRITICAL: 2}


def _plugin_of(record: logging.LogRecord) -> str | None:
    prefix = "pipevisor.plugin."
    return record.name[len(prefix):] if record.name.startswith(prefix) else None


def _traceback(text: str) -> str:
    """A traceback indented under its record, each line escaped: an exception message
    may carry plugin text, and no line of it may start where a new record would."""
    return "\n".join("    " + printable(line, keep_tabs=True) for line in text.splitlines())


class JournalFormatter(logging.Formatter):
    """``<N>`` priority prefixes that journald turns into log levels; no timestamp
    (the journal adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _JOURNAL_PRIORITY.get(record.levelno, 6)
        plugin = _plugin_of(record)
        who = f"[{plugin}]" if plugin else record.name.removeprefix("pipevisor.")
        text = f"<{prio}>{who}: {printable(record.getMessage())}"
        if record.exc_info:
            text += "\n" + _traceback(self.formatException(record.exc_info))
        return text.replace("\n", f"\n<{prio}>")


class TextFormatter(logging.Formatter):
    """Timestamped lines for a terminal; a plugin's stderr lines are tagged ``[name]``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        plugin = _plugin_of(record)
        who = f"[{plugin}]" if plugin else record.name.removeprefix("pipevisor.")
        text = (f"{ts}.{int(record.msecs):03d} {record.levelname:<7} {who}: "
                f"{printable(record.getMessage())}")
        if record.exc_info:
            text += "\n" + _traceback(self.formatException(record.exc_info))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created, "level": record.levelname.lower(),
            "logger": record.name, "msg": record.getMessage(),
        }
        plugin = _plugin_of(record)
        if plugin:
            doc["plugin"] = plugin
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(fmt: LogFormat, level: str, environ: dict[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(sys.stderr)
    if fmt is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    elif env.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
