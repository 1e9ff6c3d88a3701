"""Schema-versioned interfaces: the model, the minor/major rules, per-method negotiation.

An *interface* is one method's contract, one JSON Schema for its params and one
for its result, per version ``MAJOR.MINOR``. This module works on documents that
are already parsed (``supervisor/interfaces.py`` reads them from disk), so it
stays sans-I/O and the same checks serve files, embedded dicts and tests.

The rules (SPEC.md section 11): a new minor only adds *optional* members; the
loader enforces that structurally, because a negotiation that trusts a broken
minor would silently send a plugin fields it requires but never gets. Anything
else is a new major, which only an adapter can bridge.

Negotiation gives each method a :class:`Binding` that says which version each
side speaks and how the gap is closed, and that carries the compiled validators
and the pruning step, so the call path does no look-ups beyond one dict get.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from pipevisor.protocol.errors import ProtocolError, VersionError
from pipevisor.protocol.versions import Version

Converter = Callable[[Any], Any]
"""A pure function converting one payload (params or result) between two majors."""

_DOC_KEYS = frozenset({"params", "result", "deprecated", "description"})


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


_rs = _optional("jsonschema_rs")
"""The compiled validator of the ``fast`` extra (``pip install 'pipevisor[fast]'``), or None.

It only ever says "valid" on the call path: jsonschema stays the reference for
the meta-schema check and for every error (``InterfaceViolation`` and the
-32602 ``data.path``), so installing it changes speed, never verdicts or error
texts. See :func:`_fast_validator` for when it is used at all.
"""


class InterfaceError(ProtocolError):
    """An interface document is malformed; ``source`` names the file (or key) at fault."""

    def __init__(self, source: str, fault: str) -> None:
        super().__init__(f"{source}: {fault}")
        self.source = source
        self.fault = fault


class InterfaceViolation(ProtocolError):
    """A payload breaks its interface; ``path`` is the JSON path of the first fault."""

    def __init__(self, part: str, method: str, version: Version, path: str, message: str) -> None:
        super().__init__(f"{method} {version} {part} {path}: {message}")
        self.part = part
        self.method = method
        self.version = version
        self.path = path
        self.message = message

    def to_data(self) -> dict[str, Any]:
        return {"method": self.method, "version": str(self.version), "part": self.part,
                "path": self.path, "fault": self.message}


class Direction(StrEnum):
    PLUGIN = "plugin"
    """Methods the host calls on plugins."""
    HOST = "host"
    """Methods the host serves to plugins."""


@dataclass(frozen=True, slots=True, eq=False)
class InterfaceVersion:
    """One version of one method's contract; validators are compiled once, here.

    ``fast=False`` keeps the compiled validator out even when it is installed
    (for comparisons; verdicts are the same either way).
    """

    method: str
    version: Version
    params: Any
    result: Any
    deprecated: str | None = None
    description: str | None = None
    source: str = "<memory>"
    fast: bool = field(default=True, repr=False)
    params_validator: Draft202012Validator = field(init=False, repr=False)
    result_validator: Draft202012Validator = field(init=False, repr=False)
    params_fast: Callable[[Any], bool] | None = field(init=False, repr=False)
    result_fast: Callable[[Any], bool] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params_validator", Draft202012Validator(self.params))
        object.__setattr__(self, "result_validator", Draft202012Validator(self.result))
        object.__setattr__(self, "params_fast", _fast_validator(self.params) if self.fast else None)
        object.__setattr__(self, "result_fast", _fast_validator(self.result) if self.fast else None)

    def check(self, part: str, instance: Any) -> None:
        """Raise :class:`InterfaceViolation` when ``instance`` breaks the ``part`` schema."""
        if part == "params":
            fast, validator = self.params_fast, self.params_validator
        else:
            fast, validator = self.result_fast, self.result_validator
        if fast is not None and _plain_json(instance):
            try:
                if fast(instance):
                    return
            except Exception:
                pass  # as for "invalid": only a hint
            # "invalid" from the fast validator is only a hint: the reference
            # decides, and words the error.
        if validator.is_valid(instance):
            return
        error = best_match(validator.iter_errors(instance))
        assert error is not None
        raise InterfaceViolation(part, self.method, self.version, error.json_path, error.message)

    def prune(self, part: str, instance: Any) -> Any:
        """Down-convert: drop what this version does not know (see :func:`prune`)."""
        schema = self.params if part == "params" else self.result
        return prune(instance, schema, schema)


def parse_document(method: str, version: str, doc: Any, source: str,
                   fast: bool = True) -> InterfaceVersion:
    """Check one interface document (params/result schemas against the meta-schema).

    Raises:
        InterfaceError: naming ``source`` and the fault.
    """
    try:
        ver = Version.parse(version)
    except VersionError as exc:
        raise InterfaceError(source, f"{exc} (name files MAJOR.MINOR.json)") from None
    if not isinstance(doc, dict):
        raise InterfaceError(source, f"must be a JSON object, not {type(doc).__name__}")
    unknown = set(doc) - _DOC_KEYS
    if unknown:
        raise InterfaceError(source, f"unknown keys {sorted(unknown)}; allowed: "
                                     f"{sorted(_DOC_KEYS)}")
    for part in ("params", "result"):
        if part not in doc:
            raise InterfaceError(source, f"missing {part!r} (a JSON Schema; true accepts anything)")
        try:
            Draft202012Validator.check_schema(doc[part])
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "(root)"
            raise InterfaceError(
                source, f"{part} is not a valid JSON Schema (2020-12) at {where}: {exc.message}"
            ) from None
    deprecated = doc.get("deprecated")
    if deprecated is True:
        deprecated = f"{method} {ver} is deprecated"
    elif deprecated is False:
        deprecated = None
    if deprecated is not None and not isinstance(deprecated, str):
        raise InterfaceError(source, "deprecated must be a boolean or a string saying why")
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        raise InterfaceError(source, "description must be a string")
    return InterfaceVersion(method, ver, doc["params"], doc["result"], deprecated,
                            description, source, fast)


class Interface:
    """Every version the host knows of one method; the newest is what its callers speak."""

    def __init__(self, method: str, versions: Iterable[InterfaceVersion]) -> None:
        self.method = method
        self.versions: dict[Version, InterfaceVersion] = {v.version: v for v in versions}
        if not self.versions:
            raise InterfaceError(method, "an interface needs at least one version")
        self.current = self.versions[max(self.versions)]
        self._check_minors()

    def offered(self) -> tuple[str, ...]:
        return tuple(str(v) for v in sorted(self.versions))

    def best(self, major: int, max_minor: int) -> InterfaceVersion | None:
        """The newest version of ``major`` not newer than ``major.max_minor``."""
        fits = [v for v in self.versions if v.major == major and v.minor <= max_minor]
        return self.versions[max(fits)] if fits else None

    def _check_minors(self) -> None:
        ordered = sorted(self.versions)
        for old, new in itertools.pairwise(ordered):
            if old.major != new.major:
                continue
            a, b = self.versions[old], self.versions[new]
            for part in ("params", "result"):
                problem = _only_adds_optional(getattr(a, part), getattr(b, part), "$")
                if problem:
                    raise InterfaceError(
                        b.source, f"{part}: {problem}; a minor version may only add optional "
                                  f"members to {old}, anything else needs a new major")


def _only_adds_optional(old: Any, new: Any, path: str) -> str | None:
    """Structural minor-version check over ``properties``/``required``, recursively."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    old_req, new_req = set(old.get("required", ())), set(new.get("required", ()))
    added = sorted(new_req - old_req)
    if added:
        return f"{path} makes {added} required"
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    if isinstance(old_props, dict) and isinstance(new_props, dict):
        gone = sorted(set(old_props) - set(new_props))
        if gone and new.get("additionalProperties") is False:
            return f"{path} removes {gone}"
        for name in set(old_props) & set(new_props):
            problem = _only_adds_optional(old_props[name], new_props[name], f"{path}.{name}")
            if problem:
                return problem
            if (isinstance(old_props[name], dict) and isinstance(new_props[name], dict)
                    and "type" in old_props[name]
                    and old_props[name].get("type") != new_props[name].get("type")):
                return f"{path}.{name} changes type"
    return None


class InterfaceSet:
    """The host's interfaces, both directions. Build with :meth:`from_documents`."""

    def __init__(self, plugin: Mapping[str, Interface] | None = None,
                 host: Mapping[str, Interface] | None = None) -> None:
        self.plugin: dict[str, Interface] = dict(plugin or {})
        self.host: dict[str, Interface] = dict(host or {})

    @classmethod
    def from_documents(cls, docs: Mapping[str, Mapping[str, Mapping[str, Any]]],
                       sources: Mapping[tuple[str, str, str], str] | None = None,
                       *, fast: bool = True) -> InterfaceSet:
        """From ``{"plugin"|"host": {method: {"MAJOR.MINOR": document}}}``.

        ``sources`` maps (direction, method, version) to a file name for errors;
        ``fast=False`` validates with jsonschema alone (see :class:`InterfaceVersion`).
        """
        unknown = set(docs) - {d.value for d in Direction}
        if unknown:
            raise InterfaceError("interfaces", f"unknown directions {sorted(unknown)}; "
                                               "use 'plugin' and 'host'")
        built: dict[str, dict[str, Interface]] = {"plugin": {}, "host": {}}
        for direction, methods in docs.items():
            for method, versions in methods.items():
                parsed = []
                for version, doc in versions.items():
                    source = (sources or {}).get(
                        (direction, method, version), f"{direction}/{method}/{version}")
                    parsed.append(parse_document(method, version, doc, source, fast))
                built[direction][method] = Interface(method, parsed)
        return cls(built["plugin"], built["host"])

    def offer(self, direction: Direction = Direction.PLUGIN) -> dict[str, tuple[str, ...]]:
        """The handshake's ``interfaces`` (or ``hostMethods``) member."""
        table = self.plugin if direction is Direction.PLUGIN else self.host
        return {name: iface.offered() for name, iface in table.items()}


# ====================================================================== negotiation


class How(StrEnum):
    EXACT = "exact"
    DOWN_CONVERTED = "down-converted"
    """Same major, different minors: the newer side's extra members are dropped."""
    ADAPTER = "adapter"
    DISABLED = "disabled"
    UNVERSIONED = "unversioned"
    """The plugin declared no version: params checked against the host's, results not."""
    NO_INTERFACE = "no-interface"
    """The host has no interface for the method: passed through unvalidated."""


@dataclass(frozen=True, slots=True)
class Checks:
    """Validation switches, per direction of travel."""

    params: bool = True
    results: bool = True


@dataclass(slots=True, kw_only=True)
class Negotiated:
    """What both call directions record of one negotiated method: how it travels, the
    versions on each side and on the wire, and why (status and events show it)."""

    method: str
    how: How
    host: Version | None = None
    plugin: Version | None = None
    wire: Version | None = None
    reason: str | None = None
    deprecated: str | None = None

    @property
    def degraded(self) -> bool:
        return self.how is How.DISABLED

    def to_json(self) -> dict[str, Any]:
        """The binding as status and events show it."""
        out: dict[str, Any] = {"how": str(self.how)}
        for key, value in (("host", self.host), ("plugin", self.plugin), ("wire", self.wire)):
            if value is not None:
                out[key] = str(value)
        if self.reason:
            out["reason"] = self.reason
        if self.deprecated:
            out["deprecated"] = self.deprecated
        return out


@dataclass(slots=True, kw_only=True)
class Binding(Negotiated):
    """How calls of one method travel between the host's callers and this plugin."""

    caller_side: InterfaceVersion | None = None
    plugin_side: InterfaceVersion | None = None
    to_plugin: Converter | None = None
    from_plugin: Converter | None = None
    checks: Checks = field(default_factory=Checks)

    def outgoing(self, params: Any) -> Any:
        """Caller's params -> what goes on the wire. Raises :class:`InterfaceViolation`."""
        if self.checks.params and self.caller_side is not None:
            self.caller_side.check("params", params)
        if self.to_plugin is not None:
            params = self.to_plugin(params)
        if self.plugin_side is not None and self.plugin_side is not self.caller_side:
            params = self.plugin_side.prune("params", params)
        return params

    def incoming(self, result: Any) -> Any:
        """Plugin's result -> what the caller gets. Raises :class:`InterfaceViolation`."""
        side = self.plugin_side
        if side is not None:
            if self.checks.results:
                side.check("result", result)
            if self.how is not How.EXACT:
                result = side.prune("result", result)
        if self.from_plugin is not None:
            result = self.from_plugin(result)
        return result


AdapterLookup = Callable[[str, int, int], tuple[Converter, Converter] | None]
"""(method, host major, plugin major) -> (to_plugin, from_plugin), or None."""


def _no_adapters(method: str, host_major: int, plugin_major: int) -> None:
    return None


def negotiate_method(iface: Interface | None, method: str, declared: Version | None,
                     adapters: AdapterLookup = _no_adapters,
                     checks: Checks = Checks()) -> Binding:
    """Decide one method's :class:`Binding` (see SPEC.md section 11)."""
    if iface is None:
        return Binding(method=method, how=How.NO_INTERFACE, plugin=declared, checks=checks,
                       reason="the host has no interface for this method; not validated")
    cur = iface.current
    if declared is None:
        return Binding(method=method, how=How.UNVERSIONED, host=cur.version, wire=cur.version,
                       caller_side=cur, checks=checks,
                       reason=f"the plugin declares no version; assumed {cur.version}, "
                              "results not validated")
    if declared.major == cur.version.major:
        side = iface.best(declared.major, declared.minor)
        assert side is not None  # cur itself fits when declared >= cur
        wire = min(declared, cur.version)
        if declared == cur.version:
            how, reason = How.EXACT, None
        elif declared < cur.version:
            how = How.DOWN_CONVERTED
            reason = (f"the plugin implements {declared}, the host {cur.version}: talking "
                      f"{wire}, newer params members are dropped")
        else:
            how = How.DOWN_CONVERTED
            reason = (f"the plugin implements {declared}, newer than the host's "
                      f"{cur.version}: talking {wire}, newer result members are dropped")
        return Binding(method=method, how=how, host=cur.version, plugin=declared, wire=wire,
                       reason=reason, deprecated=side.deprecated, caller_side=cur,
                       plugin_side=side, checks=checks)
    adapter = adapters(method, cur.version.major, declared.major)
    side = iface.best(declared.major, declared.minor)
    if adapter is None:
        return Binding(method=method, how=How.DISABLED, host=cur.version, plugin=declared,
                       reason=f"the plugin implements {method} {declared}, the host speaks "
                       f"{cur.version}, and no adapter {cur.version.major}->{declared.major} "
                       "is registered", deprecated=side.deprecated if side else None,
                       checks=checks)
    return Binding(method=method, how=How.ADAPTER, host=cur.version, plugin=declared,
                   wire=declared,
                   reason=f"adapter {cur.version.major}->{declared.major} converts between "
                   f"{cur.version} and {declared}"
                   + ("" if side is not None else
                      f"; the host has no schema for {declared.major}.x, plugin side unvalidated"),
                   deprecated=side.deprecated if side else None, caller_side=cur,
                   plugin_side=side, to_plugin=adapter[0], from_plugin=adapter[1], checks=checks)


def negotiate(interfaces: InterfaceSet, declared: Mapping[str, Version | None],
              adapters: AdapterLookup = _no_adapters,
              checks: Checks = Checks()) -> dict[str, Binding]:
    """One binding per method the plugin declares; methods the host knows but the plugin
    does not serve are absent (calls to them get the plugin's own 'method not found')."""
    return {name: negotiate_method(interfaces.plugin.get(name), name, version, adapters, checks)
            for name, version in declared.items()}


def negotiate_host_methods(interfaces: InterfaceSet, served: Collection[str],
                           checks: Checks = Checks()) -> dict[str, Binding]:
    """Bindings for the methods the host serves to plugins (validated at the current version)."""
    out: dict[str, Binding] = {}
    for name in served:
        iface = interfaces.host.get(name)
        if iface is None:
            out[name] = Binding(method=name, how=How.NO_INTERFACE, checks=checks)
        else:
            cur = iface.current
            out[name] = Binding(method=name, how=How.EXACT, host=cur.version,
                                plugin=cur.version, wire=cur.version, caller_side=cur,
                                plugin_side=cur, checks=checks)
    return out


# ====================================================================== down-conversion


def prune(instance: Any, schema: Any, root: Any) -> Any:
    """Drop the object members a schema does not declare, recursively.

    This is the down-conversion of the spec: a payload written for a newer minor
    becomes one for an older minor by removing what the older one does not know.
    Members are kept when the schema has no ``properties`` at all (it says nothing
    about members) or when ``additionalProperties`` is itself a schema. Local
    ``$ref`` (``#/...``) and ``allOf`` are followed; other combinators are left alone.
    """
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return instance
    for sub in schema.get("allOf", ()):
        instance = prune(instance, sub, root)
    if isinstance(instance, dict):
        props = schema.get("properties")
        if not isinstance(props, dict):
            return instance
        patterns = schema.get("patternProperties") or {}
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, value in instance.items():
            if key in props:
                out[key] = prune(value, props[key], root)
            elif patterns or isinstance(extra, dict):
                out[key] = value
        return out
    if isinstance(instance, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [prune(item, items, root) for item in instance]
    return instance


def _resolve(schema: Any, root: Any) -> Any:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
        ref: str = schema["$ref"]
        if not ref.startswith("#"):
            return schema
        target: Any = root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return schema
            target = target[part]
        schema = target
        seen += 1
    return schema


# ====================================================================== fast validation

_DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_SCHEMA_ONE = frozenset({
    "additionalProperties", "items", "propertyNames", "not", "if", "then", "else",
    "contains", "unevaluatedProperties", "unevaluatedItems",
})
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAP = frozenset({"properties", "$defs", "definitions", "dependentSchemas"})
_PLAIN_KEYWORDS = frozenset({
    "type", "required", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "dependentRequired", "minContains", "maxContains",
    "$comment", "title", "description", "default", "examples", "deprecated", "readOnly",
    "writeOnly", "format", "$anchor",
})
"""Keywords on which jsonschema-rs and jsonschema agree for plain JSON (``format`` is an
annotation in both). Left out on purpose: ``pattern``/``patternProperties`` (Rust's
regex is not Python's ``re``: ``$`` before a final newline, ``\\d`` beyond ASCII),
``multipleOf`` (jsonschema-rs says 0.3 is a multiple of 0.1, float division does not),
remote or dynamic references, ``$id`` below the root, other drafts, unknown keywords.
A schema using any of them is validated by jsonschema alone."""

_MAX_EXACT_INT = 2**53
"""Beyond this an integer compared with a float limit may be rounded on the Rust side."""


def _fast_validator(schema: Any) -> Callable[[Any], bool] | None:
    """A compiled ``is_valid`` for ``schema``, when it is installed and safe to trust."""
    if _rs is None or not _fast_safe(schema, root=True):
        return None
    try:
        # validate_formats=False: jsonschema is built without a format checker, so
        # formats are annotations there too. The retriever refuses every fetch (the
        # protocol layer does no I/O; only local references pass _fast_safe anyway).
        compiled = _rs.Draft202012Validator(schema, validate_formats=False,
                                            retriever=_no_retrieval)
    except Exception:
        return None  # anything it cannot compile is left to the reference
    is_valid: Callable[[Any], bool] = compiled.is_valid
    return is_valid


def _no_retrieval(uri: str) -> Any:
    raise LookupError(f"interfaces resolve local references only, not {uri}")


def _fast_safe(schema: Any, root: bool = False) -> bool:
    """True when every keyword of ``schema`` is one both validators read the same way."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        if key in _PLAIN_KEYWORDS:
            continue
        if key in _SCHEMA_ONE:
            if not _fast_safe(value):
                return False
        elif key in _SCHEMA_LIST:
            if not isinstance(value, list) or not all(_fast_safe(v) for v in value):
                return False
        elif key in _SCHEMA_MAP:
            if not isinstance(value, dict) or not all(_fast_safe(v) for v in value.values()):
                return False
        elif key == "$ref":
            if not isinstance(value, str) or not value.startswith("#"):
                return False
        elif key == "$schema":
            if not root or value not in (_DRAFT_2020_12, _DRAFT_2020_12 + "#"):
                return False
        elif key == "$id":
            if not root:
                return False
        else:
            return False
    return True


def _plain_json(value: Any) -> bool:
    """Only what a JSON decoder produces, with integers a float holds exactly.

    jsonschema-rs reads a tuple as an array and a str enum as a string where
    jsonschema says "wrong type", and rejects other Python objects outright;
    such instances, and the rare huge integer, go to the reference directly.
    """
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-_MAX_EXACT_INT <= value <= _MAX_EXACT_INT)
    if t is float:
        return math.isfinite(value)
    if t is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    if t is list:
        return all(_plain_json(v) for v in value)
    return False


def fast_validation_available() -> bool:
    """Whether the compiled validator (the ``fast`` extra) is installed."""
    return _rs is not None
