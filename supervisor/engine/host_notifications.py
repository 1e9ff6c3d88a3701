"""Notifications a plugin sends to the host, delivered to handlers the host registers
(``Supervisor.notification_handler``); the counterpart of host methods for messages
that get no answer (SPEC 4.4, 8).

A plugin decides how many notifications it sends, so delivery is bounded: each
plugin has at most :data:`MAX_IN_FLIGHT` handler runs at once, and what comes beyond
is dropped and counted, never queued. Params are checked against the handler's JSON
Schema, when it gave one, before the handler runs; a notification gets no answer,
so a bad one is logged (a few times, then one line in a thousand) and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anyio.abc import TaskGroup
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

log = logging.getLogger("pipevisor.notifications")

NotificationHandler = Callable[[str, Any], Awaitable[None]]
"""``await handler(plugin_name, params)``; what it returns is ignored."""

MAX_IN_FLIGHT = 64
"""Handler runs one plugin may have going at once; more are dropped, not queued."""

RESERVED_PREFIX = "pipevisor/"


def _worth_logging(count: int) -> bool:
    return count <= 10 or count % 1000 == 0


@dataclass(slots=True)
class _Handler:
    fn: NotificationHandler
    validator: Draft202012Validator | None


class NotificationHandlers:
    def __init__(self) -> None:
        self._handlers: dict[str, _Handler] = {}
        self._in_flight: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        """Per plugin: notifications dropped because MAX_IN_FLIGHT runs were going."""
        self.invalid: dict[str, int] = {}
        """Per plugin: notifications whose params failed the handler's schema."""
        self.failed: dict[str, int] = {}
        """Per plugin: handler runs that raised."""

    def add(self, method: str, fn: NotificationHandler,
            params_schema: Mapping[str, Any] | None = None) -> None:
        if method.startswith(RESERVED_PREFIX):
            raise ValueError(f"{method!r}: names under {RESERVED_PREFIX} are the protocol's")
        validator = None
        if params_schema is not None:
            Draft202012Validator.check_schema(params_schema)
            validator = Draft202012Validator(params_schema)
        self._handlers[method] = _Handler(fn, validator)

    def __contains__(self, method: object) -> bool:
        return method in self._handlers

    def dispatch(self, plugin: str, method: str, params: Any, tg: TaskGroup) -> bool:
        """Start the handler for ``method`` if there is one and ``params`` pass; True
        when a run was started."""
        handler = self._handlers.get(method)
        if handler is None:
            return False
        if handler.validator is not None:
            error = best_match(handler.validator.iter_errors(params))
            if error is not None:
                n = self.invalid[plugin] = self.invalid.get(plugin, 0) + 1
                if _worth_logging(n):
                    where = "/".join(str(p) for p in error.absolute_path) or "params"
                    log.warning("plugin %s: notification %s dropped, invalid params at %s: "
                                "%s (#%d)", plugin, method, where, error.message, n)
                return False
        if self._in_flight.get(plugin, 0) >= MAX_IN_FLIGHT:
            n = self.dropped[plugin] = self.dropped.get(plugin, 0) + 1
            if _worth_logging(n):
                log.warning("plugin %s: notification %s dropped: %d handler runs already "
                            "going for this plugin (#%d)", plugin, method, MAX_IN_FLIGHT, n)
            return False
        self._in_flight[plugin] = self._in_flight.get(plugin, 0) + 1
        tg.start_soon(self._run, plugin, method, handler.fn, params)
        return True

    async def _run(self, plugin: str, method: str, fn: NotificationHandler,
                   params: Any) -> None:
        try:
            await fn(plugin, params)
        except Exception as exc:  # the host's handler bug is logged, never fatal
            n = self.failed[plugin] = self.failed.get(plugin, 0) + 1
            if _worth_logging(n):
                log.error("notification handler for %s (from plugin %s) failed (#%d)",
                          method, plugin, n, exc_info=exc)
        finally:
            self._in_flight[plugin] -= 1
