"""What a plugin says besides answers: its stderr, its notifications and its protocol
faults, turned into log lines, events and the kept tail.

All of it is text the host did not ask for, so every path here is bounded: the tail
(engine/plugin_log.py) in lines and bytes, the host's log by the plugin's budget, and
the warnings about faults to the first ten and every thousandth. The runner hands each
instance's callbacks to the connection and the stderr pump; a protocol fault under
``on_protocol_error = restart`` is the only thing here that can end the instance, and
it does so through the runner's one end funnel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from pipevisor.protocol import LOG, PROGRESS, ErrorCode, Fault, Notification, local_error
from pipevisor.supervisor.engine import presets
from pipevisor.supervisor.engine.config import PluginSpec, Preset, ProtocolErrorAction
from pipevisor.supervisor.engine.ending import End, EndKind
from pipevisor.supervisor.engine.events import EventHub, EventKind, SupervisorEvent
from pipevisor.supervisor.engine.plugin_log import LogBudget, StderrTail

__all__ = ["LOG_LEVELS", "PluginOutput", "stderr_record"]

log = logging.getLogger("pipevisor.runner")

LOG_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO,
    "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL,
    "alert": logging.CRITICAL, "emergency": logging.CRITICAL,
}
"""SPEC 2.4 / RFC 5424 level names, as the host's logging levels."""


def stderr_record(line: str) -> tuple[int, str]:
    """(level, message) of one stderr line: a JSON object with a known string ``level``
    and a string ``message`` (or ``msg``) is logged at that level with its message
    (SPEC 2.4); anything else is the line itself, at info. The line is kept as it is
    in the tail and the stderr events either way."""
    if not line.startswith("{") or '"level"' not in line:
        return logging.INFO, line
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return logging.INFO, line
    if not isinstance(doc, dict):
        return logging.INFO, line
    name = doc.get("level")
    level = LOG_LEVELS.get(name) if isinstance(name, str) else None
    message = doc.get("message", doc.get("msg"))
    if level is None or not isinstance(message, str):
        return logging.INFO, line
    return level, message


class PluginOutput:
    """One plugin's stderr, notifications and faults, across its instances."""

    def __init__(self, spec: PluginSpec, hub: EventHub,
                 notification_handler: Callable[[str, str, Any], None] | None,
                 end: Callable[[End], None], handshaking: Callable[[], bool]) -> None:
        self.name = spec.name
        self._spec = spec
        self._hub = hub
        self._notification_handler = notification_handler
        self._end = end
        self.stderr = StderrTail(spec.stderr_lines, spec.stderr_tail_bytes)
        self.log_budget = LogBudget(spec.log_lines_per_second, spec.log_bytes_per_second,
                                    time.monotonic())
        """What of stderr and ``pipevisor/log`` reaches the host's log (docs/bounds.md)."""
        self._suppressed_noted = 0.0
        self._plugin_log = logging.getLogger(f"pipevisor.plugin.{spec.name}")
        self.faults = 0
        """Protocol faults (lines on stdout that are not JSON-RPC) since the plugin loaded."""
        self.instance = 0
        """The instance whose output arrives now (set by the runner)."""
        self._handshaking = handshaking
        """While it says so, the first bad stdout line is kept for the handshake's verdict."""
        self.first_stdout: bytes | None = None
        """The start of this instance's first non-JSON-RPC output, if any."""

    def new_instance(self, instance: int) -> None:
        self.instance = instance
        self.first_stdout = None

    @property
    def suppressed(self) -> int:
        """Lines (stderr and pipevisor/log) kept out of the log by the budget, in all."""
        return self.log_budget.total_suppressed_lines

    def to_log(self, level: int, text: str) -> None:
        """Log one line of the plugin's if its budget allows; say what was held back."""
        budget = self.log_budget
        now = time.monotonic()
        if not budget.allow(len(text), now):
            return
        if budget.suppressed_lines and now - self._suppressed_noted >= 1.0:
            self._suppressed_noted = now  # one note a second at most
            lines, size = budget.take_suppressed()
            self._plugin_log.warning("[%d lines (%d bytes) from the plugin not logged: over "
                                     "its log budget of %g lines and %d bytes per second]",
                                     lines, size, budget.lines_per_second,
                                     budget.bytes_per_second)
        self._plugin_log.log(level, "%s", text)

    def on_stderr(self, line: str) -> None:
        self.stderr.add(line, self.instance)
        # for `pipevisor logs --follow`; with no subscriber this is one small object
        self._hub.publish(SupervisorEvent(self.name, EventKind.STDERR,
                                          {"line": line, "instance": self.instance}))
        level, message = stderr_record(line)
        self.to_log(level, message)

    def on_notification(self, n: Notification) -> None:
        params = n.params if isinstance(n.params, dict) else {}
        if n.method == LOG:
            level = LOG_LEVELS.get(str(params.get("level")), logging.INFO)
            message = params.get("message", "")
            self.to_log(level, message if isinstance(message, str) else repr(message))
            self._hub.publish(SupervisorEvent(self.name, EventKind.LOG, {
                "level": params.get("level"), "message": params.get("message"),
                "logger": params.get("logger")}))
        elif n.method == "notifications/message" and self._spec.preset is Preset.MCP:
            # an MCP server's log (level, logger, data) goes to the log like stderr
            level = presets.MCP_LOG_LEVELS.get(str(params.get("level")), logging.INFO)
            data = params.get("data")
            logger = params.get("logger")
            text = data if isinstance(data, str) else orjson.dumps(data).decode()
            self.to_log(level, f"{logger}: {text}" if isinstance(logger, str) else text)
            self._hub.publish(SupervisorEvent(self.name, EventKind.LOG, {
                "level": params.get("level"), "message": text, "logger": logger}))
        elif n.method == PROGRESS:
            self._hub.publish(SupervisorEvent(self.name, EventKind.PROGRESS, dict(params)))
        else:
            self._hub.publish(SupervisorEvent(self.name, EventKind.NOTIFICATION,
                                              {"method": n.method, "params": n.params}))
            if self._notification_handler is not None:
                self._notification_handler(self.name, n.method, n.params)

    def on_fault(self, fault: Fault) -> None:
        self.faults += 1
        if self.first_stdout is None and self._handshaking():
            self.first_stdout = bytes(fault.raw[:200])
        raw = fault.raw.decode("utf-8", "replace")
        if self.faults <= 10 or self.faults % 1000 == 0:
            log.warning("plugin %s: protocol fault #%d %s: %s; line starts %r", self.name,
                        self.faults, fault.kind, fault.detail, raw[:120])
        self._hub.publish(SupervisorEvent(self.name, EventKind.FAULT, {
            "fault": str(fault.kind), "detail": fault.detail, "raw": raw[:200],
            "count": self.faults}))
        if self._spec.on_protocol_error is ProtocolErrorAction.RESTART:
            self._end(End(EndKind.PROTOCOL, f"protocol fault ({fault.kind}: {fault.detail})",
                          error=local_error(ErrorCode.PROTOCOL_VIOLATION,
                                            f"plugin {self.name!r} broke the protocol: "
                                            f"{fault.detail}", plugin=self.name)))
