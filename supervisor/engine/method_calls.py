"""Calls from the host to a plugin's methods, through their negotiated interfaces.

Each method the plugin declares in its handshake is bound once per instance to the
host's interface for it (exact, down-converted, adapted, disabled, or no interface at
all). A call through a binding is checked and converted on the way out, sent, and its
result checked and converted on the way back. Methods without an interface skip all
of it: the call path stays a plain dict miss. Who is to blame is kept apart on every
path: bad params are the caller's (-32602), a result that breaks the interface is the
plugin's (INVALID_RESULT, counted and published, and under ``on_protocol_error =
restart`` the end of its instance), an adapter that raises is the host's (-32603).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipevisor.protocol import ErrorCode, HandshakeResult, local_error
from pipevisor.protocol.interfaces import (
    AdapterLookup,
    Binding,
    Checks,
    How,
    InterfaceSet,
    InterfaceViolation,
    negotiate,
)
from pipevisor.supervisor.engine.config import PluginSpec, ProtocolErrorAction
from pipevisor.supervisor.engine.ending import End, EndKind
from pipevisor.supervisor.engine.events import EventHub, EventKind, SupervisorEvent
from pipevisor.supervisor.engine.host_calls import adapter_failure
from pipevisor.supervisor.errors import invalid_params, local

__all__ = ["MethodCalls"]

log = logging.getLogger("pipevisor.runner")


class MethodCalls:
    """One plugin's method bindings, across its instances."""

    def __init__(self, spec: PluginSpec, hub: EventHub, interfaces: InterfaceSet,
                 adapters: AdapterLookup | None, end: Callable[[End], None]) -> None:
        self.name = spec.name
        self._spec = spec
        self._hub = hub
        self._interfaces = interfaces
        self._adapters = adapters
        self._end = end
        self.bindings: dict[str, Binding] = {}
        """Every declared method's negotiated binding (for status)."""
        self.routes: dict[str, Binding] = {}
        """The bindings a call must go through (validation, conversion, disabled)."""
        self.invalid_results = 0

    def reset(self) -> None:
        """A new instance: nothing is bound until its handshake."""
        self.bindings, self.routes = {}, {}

    def negotiate(self, result: HandshakeResult) -> list[Binding]:
        """Bind every declared method to an interface version; returns the disabled ones."""
        if not self._interfaces.plugin:
            return []  # nothing to check: the call path stays a plain dict miss
        checks = Checks(self._spec.validate_params, self._spec.validate_results)
        declared = {m: i.version for m, i in result.methods.items()}
        if self._adapters is None:
            self.bindings = negotiate(self._interfaces, declared, checks=checks)
        else:
            self.bindings = negotiate(self._interfaces, declared, self._adapters, checks)
        self.routes = {m: b for m, b in self.bindings.items() if b.how is not How.NO_INTERFACE}
        disabled = []
        for b in self.bindings.values():
            if b.deprecated:
                log.warning("plugin %s: %s uses deprecated interface %s: %s", self.name,
                            b.method, b.plugin, b.deprecated)
            if b.how is How.DISABLED:
                disabled.append(b)
                log.warning("plugin %s: method %s disabled: %s", self.name, b.method,
                            b.reason)
            if b.how not in (How.EXACT, How.NO_INTERFACE) or b.deprecated:
                self._hub.publish(SupervisorEvent(self.name, EventKind.INTERFACE,
                                                  {"method": b.method, **b.to_json()}))
        return disabled

    def outgoing(self, route: Binding, params: Any) -> Any:
        """Params on their way to the plugin: disabled? valid? converted."""
        method = route.method
        if route.how is How.DISABLED:
            raise local(ErrorCode.METHOD_UNAVAILABLE,
                        f"{self.name}.{method} is disabled: {route.reason}",
                        plugin=self.name, method=method,
                        hostVersion=str(route.host), pluginVersion=str(route.plugin))
        try:
            return route.outgoing(params)
        except InterfaceViolation as exc:
            raise invalid_params(method, exc, plugin=self.name) from None
        except Exception as exc:  # an adapter's bug must not look like the plugin's
            raise adapter_failure(self.name, f"adapter for {method} {route.host}->{route.plugin}",
                                  method, "params", exc) from None

    def incoming(self, route: Binding, result: Any) -> Any:
        """A result on its way back to the caller: valid? converted back."""
        method = route.method
        try:
            return route.incoming(result)
        except InterfaceViolation as exc:
            self._on_invalid_result(exc)
            raise local(ErrorCode.INVALID_RESULT,
                        f"plugin {self.name!r} answered {method} with a result that breaks "
                        f"interface {exc.version}: {exc.path}: {exc.message}",
                        plugin=self.name, **exc.to_data()) from None
        except Exception as exc:
            raise adapter_failure(self.name, f"adapter for {method} {route.host}->{route.plugin}",
                                  method, "the result", exc) from None

    def _on_invalid_result(self, exc: InterfaceViolation) -> None:
        """Policy: every invalid result is counted, logged and published; under
        ``on_protocol_error = restart`` it also restarts the plugin like any protocol fault."""
        self.invalid_results += 1
        log.warning("plugin %s: invalid result #%d for %s %s: %s: %s", self.name,
                    self.invalid_results, exc.method, exc.version, exc.path, exc.message)
        self._hub.publish(SupervisorEvent(self.name, EventKind.INVALID_RESULT,
                                          {**exc.to_data(), "count": self.invalid_results}))
        if self._spec.on_protocol_error is ProtocolErrorAction.RESTART:
            self._end(End(EndKind.PROTOCOL, f"invalid result for {exc.method}: {exc.path}",
                          error=local_error(ErrorCode.PROTOCOL_VIOLATION,
                                            f"plugin {self.name!r} broke the interface of "
                                            f"{exc.method} {exc.version}", plugin=self.name)))
