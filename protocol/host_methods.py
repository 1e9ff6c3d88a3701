"""Version negotiation for the methods the host serves to plugins (SPEC section 8).

The mirror image of ``interfaces.negotiate``: there the host calls and the plugin
implements; here the plugin calls and the host implements, always at its current
version. A plugin may declare, in its handshake answer, the version of each host
method it was built against (``hostMethods``). Same major: they talk the lower
minor, so params of a newer plugin lose the members the host does not know, and
results lose the members the older plugin does not know (down-conversion; a minor
only adds optional members, so nothing required is lost). Another major: an adapter
the host registered for that pair converts the params up and the result down;
without one that host method is disabled for this plugin, calls to it get
METHOD_UNAVAILABLE naming both versions, and the plugin is degraded, not failed. A
plugin that declares nothing keeps the old behaviour: params and results checked at
the host's current version.

Sans-I/O like the rest of ``pipevisor.protocol``: the supervisor calls ``params_in`` before it
runs the host's function and ``result_out`` after.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pipevisor.protocol.interfaces import (
    AdapterLookup,
    Converter,
    How,
    Interface,
    InterfaceVersion,
    Negotiated,
)
from pipevisor.protocol.versions import Version

__all__ = ["HostBinding", "negotiate_host_call", "negotiate_host_calls"]


@dataclass(slots=True, kw_only=True)
class HostBinding(Negotiated):
    """How one plugin's calls of one host method travel."""

    wire_side: InterfaceVersion | None = None
    """The schema of the version both understand, used to prune (down-conversion)."""
    plugin_side: InterfaceVersion | None = None
    """With an adapter: the plugin's major as the host knows it (None: unchecked)."""
    to_plugin: Converter | None = None
    """With an adapter: the host's result -> the plugin's major."""
    from_plugin: Converter | None = None
    """With an adapter: the plugin's params -> the host's major."""

    def params_in(self, params: Any) -> Any:
        """The plugin's params -> what the host's function gets. Raises
        :class:`~pipevisor.protocol.interfaces.InterfaceViolation` when, through an adapter, they
        break the plugin's own major (the host's schema then checks the converted ones)."""
        if self.how is How.DOWN_CONVERTED and self.wire_side is not None:
            return self.wire_side.prune("params", params)
        if self.from_plugin is not None:
            if self.plugin_side is not None:
                self.plugin_side.check("params", params)
            return self.from_plugin(params)
        return params

    def result_out(self, result: Any) -> Any:
        """The host function's result -> what the plugin gets."""
        if self.how is How.DOWN_CONVERTED and self.wire_side is not None:
            return self.wire_side.prune("result", result)
        if self.to_plugin is not None:
            result = self.to_plugin(result)
            if self.plugin_side is not None:
                result = self.plugin_side.prune("result", result)
        return result


def _no_adapters(method: str, host_major: int, plugin_major: int) -> None:
    return None


def negotiate_host_call(iface: Interface | None, method: str, declared: Version | None,
                        served: bool, adapters: AdapterLookup = _no_adapters) -> HostBinding:
    """One host method as a plugin uses it."""
    if not served:
        return HostBinding(method=method, how=How.DISABLED, plugin=declared,
                           reason=f"the plugin uses host method {method}"
                                  + (f" {declared}" if declared else "")
                                  + ", which this host does not serve")
    if iface is None:
        return HostBinding(method=method, how=How.NO_INTERFACE, plugin=declared,
                           reason="the host has no interface for this method; not validated")
    cur = iface.current
    if declared is None:
        return HostBinding(method=method, how=How.UNVERSIONED, host=cur.version,
                           wire=cur.version,
                           reason="the plugin declares no version; checked at the host's "
                           f"{cur.version}")
    if declared.major != cur.version.major:
        side = iface.best(declared.major, declared.minor)
        deprecated = side.deprecated if side else None
        adapter = adapters(method, cur.version.major, declared.major)
        if adapter is None:
            return HostBinding(method=method, how=How.DISABLED, host=cur.version,
                               plugin=declared,
                               reason=f"the plugin calls host method {method} {declared}, "
                               f"the host serves {cur.version}, and no host-method adapter "
                               f"{cur.version.major}->{declared.major} is registered",
                               deprecated=deprecated)
        return HostBinding(method=method, how=How.ADAPTER, host=cur.version, plugin=declared,
                           wire=declared,
                           reason=f"adapter {cur.version.major}->{declared.major} converts "
                           f"between {cur.version} and {declared}"
                           + ("" if side is not None else
                              f"; the host has no schema for {declared.major}.x, the "
                              "plugin's side unchecked"),
                           deprecated=deprecated, plugin_side=side, to_plugin=adapter[0],
                           from_plugin=adapter[1])
    wire = min(declared, cur.version)
    side = iface.best(wire.major, wire.minor)
    deprecated = side.deprecated if side is not None else None
    if declared == cur.version:
        return HostBinding(method=method, how=How.EXACT, host=cur.version, plugin=declared,
                           wire=wire, deprecated=deprecated)
    newer = "plugin" if declared > cur.version else "host"
    return HostBinding(method=method, how=How.DOWN_CONVERTED, host=cur.version, plugin=declared,
                       wire=wire,
                       reason=f"the plugin uses {declared}, the host serves {cur.version}: "
                       f"talking {wire}, the {newer}'s newer members are dropped",
                       deprecated=deprecated, wire_side=side)


def negotiate_host_calls(host_interfaces: Mapping[str, Interface],
                         declared: Mapping[str, Version | None],
                         served: Collection[str],
                         adapters: AdapterLookup = _no_adapters) -> dict[str, HostBinding]:
    """One binding per host method the plugin declares it uses."""
    return {name: negotiate_host_call(host_interfaces.get(name), name, version,
                                      name in served, adapters)
            for name, version in declared.items()}
