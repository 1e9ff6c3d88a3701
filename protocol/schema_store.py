"""The JSON Schemas of the reserved messages, loaded from ``protocol/schemas/``.

The spec (SPEC.md) points at the same files, so what the spec says and what
the code checks cannot drift apart. Validators are compiled once and cached.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily below: jsonschema costs ~50 ms, too much for plugin start-up
    from jsonschema import Draft202012Validator
    from referencing import Registry

_BASE = "https://pipevisor.dev/schemas/protocol/"


@functools.cache
def _registry() -> tuple[Registry[Any], dict[str, dict[str, Any]]]:
    from referencing import Registry, Resource

    schemas: dict[str, dict[str, Any]] = {}
    for entry in resources.files("pipevisor.protocol").joinpath("schemas").iterdir():
        if entry.name.endswith(".json"):
            schemas[entry.name[: -len(".json")]] = json.loads(entry.read_text("utf-8"))
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    return registry, schemas


def schema_names() -> list[str]:
    return sorted(_registry()[1])


def schema(name: str) -> dict[str, Any]:
    """The raw schema document, e.g. ``schema("handshake.params")``."""
    return _registry()[1][name]


@functools.cache
def validator(name: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    registry, schemas = _registry()
    return Draft202012Validator(schemas[name], registry=registry)


def first_error(name: str, instance: Any) -> str | None:
    """None when valid, else one readable sentence with the JSON path of the fault."""
    from jsonschema.exceptions import best_match

    error = best_match(validator(name).iter_errors(instance))
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"
