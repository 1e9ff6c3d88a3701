"""Version negotiation for the methods the host serves to plugins (SPEC section 8).

The mirror image of ``interfaces.negotiate``: there the host calls and the plugin
implements; here the plugin calls and the host implements, always at its current
version. A plugin may declare, in its handshake answer, the version of each host
method it was built against (``hostMethods``). Same major: they talk the lower
minor, so params of a newer plugin lose the members the host does not know, and
results lose the members the older plugin does not know (down-conversion; a minor
only adds optional members, so nothing required is lost). Another major: that host
method is disabled for this plugin, calls to it get METHOD_UNAVAILABLE naming both
versions, and the plugin is degraded, not failed. A plugin that declares nothing
keeps the old behaviour: params and results checked at the host's current version.

Sans-I/O like the rest of ``protocol``: the supervisor calls ``params_in`` before it
runs the host's function and ``result_out`` after.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.interfaces import How, Interface, InterfaceVersion, binding_json
from protocol.versions import Version

__all__ = ["HostBinding", "negotiate_host_call", "negotiate_host_calls"]


@dataclass(slots=True)
class HostBinding:
    """How one plugin's calls of one host method travel."""

    method: str
    how: How
    host: Version | None = None
    plugin: Version | None = None
    wire: Version | None = None
    reason: str | None = None
    deprecated: str | None = None
    wire_side: InterfaceVersion | None = None
    """The schema of the version both understand, used to prune (down-conversion)."""

    @property
    def degraded(self) -> bool:
        return self.how is How.DISABLED

    def params_in(self, params: Any) -> Any:
        """The plugin's params -> what the host's function gets."""
        if self.how is How.DOWN_CONVERTED and self.wire_side is not None:
            return self.wire_side.prune("params", params)
        return params

    def result_out(self, result: Any) -> Any:
        """The host function's result -> what the plugin gets."""
        if self.how is How.DOWN_CONVERTED and self.wire_side is not None:
            return self.wire_side.prune("result", result)
        return result

    def to_json(self) -> dict[str, Any]:
        return binding_json(self.how, self.host, self.plugin, self.wire, self.reason,
                            self.deprecated)


def negotiate_host_call(iface: Interface | None, method: str, declared: Version | None,
                        served: bool) -> HostBinding:
    """One host method as a plugin uses it."""
    if not served:
        return HostBinding(method, How.DISABLED, plugin=declared,
                           reason=f"the plugin uses host method {method}"
                                  + (f" {declared}" if declared else "")
                                  + ", which this host does not serve")
    if iface is None:
        return HostBinding(method, How.NO_INTERFACE, plugin=declared,
                           reason="the host has no interface for this method; not validated")
    cur = iface.current
    if declared is None:
        return HostBinding(method, How.UNVERSIONED, cur.version, None, cur.version,
                           "the plugin declares no version; checked at the host's "
                           f"{cur.version}")
    if declared.major != cur.version.major:
        side = iface.best(declared.major, declared.minor)
        return HostBinding(method, How.DISABLED, cur.version, declared, None,
                           f"the plugin calls host method {method} {declared}, the host "
                           f"serves {cur.version}; no adapter for host methods across majors",
                           side.deprecated if side else None)
    wire = min(declared, cur.version)
    side = iface.best(wire.major, wire.minor)
    deprecated = side.deprecated if side is not None else None
    if declared == cur.version:
        return HostBinding(method, How.EXACT, cur.version, declared, wire, None, deprecated)
    newer = "plugin" if declared > cur.version else "host"
    return HostBinding(method, How.DOWN_CONVERTED, cur.version, declared, wire,
                       f"the plugin uses {declared}, the host serves {cur.version}: talking "
                       f"{wire}, the {newer}'s newer members are dropped", deprecated, side)


def negotiate_host_calls(host_interfaces: Mapping[str, Interface],
                         declared: Mapping[str, Version | None],
                         served: Collection[str]) -> dict[str, HostBinding]:
    """One binding per host method the plugin declares it uses."""
    return {name: negotiate_host_call(host_interfaces.get(name), name, version,
                                      name in served)
            for name, version in declared.items()}
