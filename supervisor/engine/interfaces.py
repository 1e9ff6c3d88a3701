"""Interfaces from disk and the adapters that bridge majors.

Folder layout (docs/interfaces.md)::

    <root>/plugin/<method>/<MAJOR.MINOR>.json   methods the host calls on plugins
    <root>/host/<method>/<MAJOR.MINOR>.json     methods the host serves to plugins

``<method>`` may span folders (``plugin/text/greet/1.0.json`` is ``text/greet``).
Each file is ``{"params": schema, "result": schema, "deprecated"?, "description"?}``.
Everything is read and checked at once, so a broken file stops the supervisor at
start with the file's name, instead of surfacing at the first call.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipevisor.protocol.interfaces import Converter, InterfaceError, InterfaceSet
from pipevisor.supervisor.errors import ConfigError


def load_interfaces(root: str | Path) -> InterfaceSet:
    """Read the folder layout above.

    Raises:
        ConfigError: naming the file and the fault (bad JSON, bad schema, bad name,
            a minor that is not additive).
    """
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"interfaces folder {str(base)!r} does not exist or is not a folder")
    docs: dict[str, dict[str, dict[str, Any]]] = {}
    sources: dict[tuple[str, str, str], str] = {}
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.name not in ("plugin", "host") or not entry.is_dir():
            raise ConfigError(f"{entry}: unexpected entry in the interfaces folder; "
                              "only the folders 'plugin' and 'host' belong there")
        for path in sorted(entry.rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            if path.suffix != ".json":
                raise ConfigError(f"{path}: not a .json interface file")
            method = path.parent.relative_to(entry).as_posix()
            if method == ".":
                raise ConfigError(f"{path}: interface files go in a folder named after the "
                                  f"method: {entry.name}/<method>/MAJOR.MINOR.json")
            try:
                doc = json.loads(path.read_text("utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read: {exc}") from None
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON: {exc}") from None
            docs.setdefault(entry.name, {}).setdefault(method, {})[path.stem] = doc
            sources[(entry.name, method, path.stem)] = str(path)
    try:
        return InterfaceSet.from_documents(docs, sources)
    except InterfaceError as exc:
        raise ConfigError(str(exc)) from None


def interfaces_from(value: str | Path | InterfaceSet | Mapping[str, Any] | None
                    ) -> InterfaceSet:
    """What SupervisorConfig.interfaces may hold: a folder, documents, a built set, or None."""
    if value is None:
        return InterfaceSet()
    if isinstance(value, InterfaceSet):
        return value
    if isinstance(value, (str, Path)):
        return load_interfaces(value)
    try:
        return InterfaceSet.from_documents(value)
    except InterfaceError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Adapter:
    """Converts one method's payloads between the host's major and a plugin's major.

    Each converter works on what travels in its direction: for a method the host
    calls, ``to_plugin`` converts the params and ``from_plugin`` the result; for a
    host method (``direction="host"``) the plugin sends the params, so
    ``from_plugin`` converts them and ``to_plugin`` converts the host's result."""

    to_plugin: Converter
    """Host major -> the plugin's major (the params of a plugin method, the result of a
    host method)."""
    from_plugin: Converter
    """The plugin's major -> the host's (the result of a plugin method, the params of a
    host method)."""


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """An adapter named in configuration: ``target`` is ``"module:attribute"`` naming an
    :class:`Adapter`, or a callable taking no arguments that returns one."""

    method: str
    host_major: int
    plugin_major: int
    target: str
    direction: str = "plugin"
    """``plugin``: a method the host calls on plugins; ``host``: a method the host
    serves to plugins."""

    def __post_init__(self) -> None:
        if self.direction not in ("plugin", "host"):
            raise ConfigError(f"adapter {self.method}: direction must be 'plugin' or 'host', "
                              f"not {self.direction!r}")


class AdapterRegistry:
    """Adapters by (direction, method, host major, plugin major)."""

    def __init__(self) -> None:
        self._adapters: dict[tuple[str, str, int, int], Adapter] = {}

    def register(self, method: str, host_major: int, plugin_major: int,
                 adapter: Adapter, direction: str = "plugin") -> None:
        if host_major == plugin_major:
            raise ConfigError(f"adapter for {method}: majors must differ (same major is "
                              "handled by down-conversion)")
        if direction not in ("plugin", "host"):
            raise ConfigError(f"adapter for {method}: direction must be 'plugin' or 'host'")
        self._adapters[(direction, method, host_major, plugin_major)] = adapter

    def load(self, spec: AdapterSpec) -> None:
        self.register(spec.method, spec.host_major, spec.plugin_major, resolve(spec),
                      spec.direction)

    def lookup(self, method: str, host_major: int,
               plugin_major: int) -> tuple[Converter, Converter] | None:
        """For a method the host calls: (to_plugin, from_plugin) or None."""
        adapter = self._adapters.get(("plugin", method, host_major, plugin_major))
        return None if adapter is None else (adapter.to_plugin, adapter.from_plugin)

    def lookup_host(self, method: str, host_major: int,
                    plugin_major: int) -> tuple[Converter, Converter] | None:
        """For a host method: (to_plugin, from_plugin) or None."""
        adapter = self._adapters.get(("host", method, host_major, plugin_major))
        return None if adapter is None else (adapter.to_plugin, adapter.from_plugin)

    def keys(self) -> list[tuple[str, int, int]]:
        return sorted(k[1:] for k in self._adapters)


def resolve(spec: AdapterSpec) -> Adapter:
    """Import ``spec.target``; errors name the adapter and what is wrong."""
    where = f"adapter {spec.method} {spec.host_major}->{spec.plugin_major} ({spec.target!r})"
    module_name, sep, attr = spec.target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where}: write the target as 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where}: {module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, Adapter):
        return obj
    if callable(obj):
        made = _call(obj)
        if isinstance(made, Adapter):
            return made
    raise ConfigError(f"{where}: is neither an Adapter nor a function returning one")


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except TypeError:
        return None
