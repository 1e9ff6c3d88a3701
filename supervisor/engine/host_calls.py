"""Requests a plugin sends to the host: which host methods it may call, at which
version, and how each request is routed.

A pipevisor plugin declares in its handshake the host methods it calls (SPEC section
8); each is bound once per instance to the host's interface (exact, adapted, or
disabled with a reason), and every request goes through its binding: checked,
converted on the way in and out, or refused. A raw-mode server (an LSP or MCP server)
declares nothing; its requests go to the host method of the same name, else to the
preset's static answers, else are answered -32601 and logged once per method so an
operator learns what to serve. Adapters are user code: their failures are logged and
answered -32603 so they never pass for the plugin's or the host's own errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from pipevisor.protocol import ErrorCode, ErrorObject, HandshakeResult, standard_error
from pipevisor.protocol.host_methods import HostBinding, negotiate_host_calls
from pipevisor.protocol.interfaces import AdapterLookup, How, InterfaceSet, InterfaceViolation
from pipevisor.supervisor.engine.config import PluginSpec
from pipevisor.supervisor.engine.connection import HostHandler
from pipevisor.supervisor.engine.events import EventHub, EventKind, SupervisorEvent
from pipevisor.supervisor.errors import CallError, invalid_params, local

__all__ = ["HostCalls", "adapter_failure"]

log = logging.getLogger("pipevisor.runner")

_MAX_UNANSWERED_NOTED = 100
"""Distinct unserved method names remembered per plugin (a flood of names costs nothing)."""


def adapter_failure(plugin: str, adapter: str, method: str, what: str,
                    exc: Exception) -> CallError:
    """An adapter's bug, logged and answered -32603, so it never looks like the
    plugin's (or the host's) own error."""
    log.error("plugin %s: %s failed on %s: %r", plugin, adapter, what, exc)
    return CallError(ErrorObject(
        ErrorCode.INTERNAL_ERROR, f"{adapter} failed on {what}: {exc!r}",
        {"origin": "pipevisor", "plugin": plugin, "method": method}))


class HostCalls:
    """One plugin's requests to the host, across its instances."""

    def __init__(self, spec: PluginSpec, hub: EventHub, handler: HostHandler | None,
                 interfaces: InterfaceSet, adapters: AdapterLookup | None,
                 raw: Callable[[], bool]) -> None:
        self.name = spec.name
        self._answers = spec.server.answers
        self._hub = hub
        self._handler = handler
        self._interfaces = interfaces
        self._adapters = adapters
        self._raw = raw
        self.bindings: dict[str, HostBinding] = {}
        """The host methods this instance declared it calls, as negotiated."""
        self._unanswered: set[str] = set()

    def negotiate(self, result: HandshakeResult, offered: Collection[str]) -> list[HostBinding]:
        """Bind the host methods the plugin says it calls; returns the disabled ones."""
        if not result.host_methods:
            self.bindings = {}
            return []
        if self._adapters is None:
            self.bindings = negotiate_host_calls(self._interfaces.host, result.host_methods,
                                                 offered)
        else:
            self.bindings = negotiate_host_calls(self._interfaces.host, result.host_methods,
                                                 offered, self._adapters)
        disabled = []
        for b in self.bindings.values():
            if b.deprecated:
                log.warning("plugin %s: uses host method %s at deprecated version %s: %s",
                            self.name, b.method, b.wire, b.deprecated)
            if b.how is How.DISABLED:
                disabled.append(b)
                log.warning("plugin %s: host method %s disabled: %s", self.name,
                            b.method, b.reason)
            if b.how not in (How.EXACT, How.NO_INTERFACE) or b.deprecated:
                self._hub.publish(SupervisorEvent(self.name, EventKind.INTERFACE, {
                    "method": b.method, "direction": "host", **b.to_json()}))
        return disabled

    async def serve(self, method: str, params: Any) -> Any:
        """A request from the plugin, through its binding of the method when it declared
        one (disabled, down-converted)."""
        if self._raw():
            return await self._serve_server_request(method, params)
        if self._handler is None:
            raise CallError(standard_error(ErrorCode.METHOD_NOT_FOUND,
                                           f"host offers no method {method!r}"))
        binding = self.bindings.get(method) if self.bindings else None
        if binding is None:
            return await self._handler(method, params)
        if binding.how is How.DISABLED:
            raise local(ErrorCode.METHOD_UNAVAILABLE,
                        f"host method {method} is disabled for plugin {self.name!r}: "
                        f"{binding.reason}", plugin=self.name, method=method,
                        binding=binding.to_json())
        try:
            params = binding.params_in(params)
        except InterfaceViolation as exc:
            raise invalid_params(f"host method {method}", exc) from None
        except Exception as exc:
            raise adapter_failure(self.name, f"host-method adapter for {method}", method,
                                  "params", exc) from None
        result = await self._handler(method, params)
        try:
            return binding.result_out(result)
        except Exception as exc:
            raise adapter_failure(self.name, f"host-method adapter for {method}", method,
                                  "the result", exc) from None

    async def _serve_server_request(self, method: str, params: Any) -> Any:
        if self._handler is not None:
            try:
                return await self._handler(method, params)
            except CallError as exc:
                if exc.code != ErrorCode.METHOD_NOT_FOUND or method not in self._answers:
                    if exc.code == ErrorCode.METHOD_NOT_FOUND:
                        self._note_unanswered(method)
                    raise
        if method in self._answers:
            return self._answers[method]
        self._note_unanswered(method)
        raise CallError(standard_error(ErrorCode.METHOD_NOT_FOUND,
                                       f"host offers no method {method!r}"))

    def _note_unanswered(self, method: str) -> None:
        """Log and publish, once per method and plugin, a server request nobody serves."""
        if method in self._unanswered or len(self._unanswered) > _MAX_UNANSWERED_NOTED:
            return
        self._unanswered.add(method)
        log.warning("plugin %s: the server asked the host for %r, which no host method "
                    "serves: answered -32601 (serve it with a host method, or a static "
                    "answer: server.answers; docs/foreign-servers.md)", self.name, method)
        self._hub.publish(SupervisorEvent(self.name, EventKind.NOTIFICATION, {
            "method": method, "unanswered_request": True}))
