"""The compiled validator (jsonschema-rs, the ``fast`` extra) never changes a verdict.

It may only say "valid" sooner: jsonschema stays the reference for every "invalid"
and for the error's path and text. These tests hold it to that on schemas it is
trusted with (random JSON against each, compared with the reference), check that
the schemas and instances where the two are known to disagree go to the reference
(regular expressions, ``multipleOf``, tuples, str enums, huge integers, remote
references), and that without the package everything is the reference alone.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipevisor.protocol.interfaces import (
    InterfaceSet,
    InterfaceVersion,
    InterfaceViolation,
    fast_validation_available,
)
from pipevisor.protocol.versions import Version

needs_fast = pytest.mark.skipif(not fast_validation_available(),
                                reason="jsonschema-rs is not installed (pip install '.[fast]')")

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["a", "b", "n", "text", "tags", "kind", "x"]

# Schemas built only from keywords both validators read the same way.
TRUSTED: list[Any] = [
    {"type": "object",
     "properties": {"text": {"type": "string", "maxLength": 3}, "n": {"type": "integer"}},
     "required": ["text"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                               "uniqueItems": True, "maxItems": 2}},
     "minProperties": 1, "maxProperties": 3, "propertyNames": {"maxLength": 2}},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": ["string", "null"]}],
     "items": False, "minItems": 1},
    {"type": "array", "contains": {"type": "number", "minimum": 0.5},
     "minContains": 2, "maxContains": 3},
    {"anyOf": [{"type": "string", "minLength": 2}, {"type": "number", "exclusiveMaximum": 1.5},
               {"const": {"a": [1, None]}}]},
    {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]},
    {"not": {"enum": [1, "a", None, True, [1]]}},
    {"if": {"type": "object", "required": ["kind"]},
     "then": {"properties": {"kind": {"enum": ["x", "y"]}}}, "else": {"type": "array"}},
    {"allOf": [{"properties": {"a": {"type": "boolean"}}}], "unevaluatedProperties": False},
    {"$defs": {"leaf": {"type": "string", "format": "email"},
               "node": {"$anchor": "node", "type": "object",
                        "properties": {"a": {"$ref": "#/$defs/leaf"}, "b": {"$ref": "#node"}}}},
     "$ref": "#/$defs/node"},
    {"type": "object", "dependentRequired": {"a": ["b"]},
     "dependentSchemas": {"n": {"properties": {"x": {"type": "null"}}}}},
    {"type": "array", "items": {"type": "integer", "minimum": -3, "maximum": 2.5},
     "unevaluatedItems": False},
    True,
    False,
]

# Mostly values at the edges the keywords above test (limits, lengths, equal int and
# float, the strings regexes disagree on), some arbitrary ones.
EDGES = [None, True, False, 0, 1, 2, -3, 1.0, 0.3, 0.5, 0.7, 1.1, 2.5, 2**53 + 1,
         "", "x", "y", "a", "ab", "abc", "abcd", "a\n", "a@b", "\u0661", "\U0001f600"]
scalars = st.one_of(st.sampled_from(EDGES), st.none() | st.booleans() | st.integers()
                    | st.floats(allow_nan=True) | st.text(max_size=5))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=12,
)


def _version(schema: Any, fast: bool) -> InterfaceVersion:
    return InterfaceVersion("m", Version.parse("1.0"), schema, True, fast=fast)


def _outcome(version: InterfaceVersion, instance: Any) -> tuple[str, str] | None:
    try:
        version.check("params", instance)
    except InterfaceViolation as exc:
        return exc.path, exc.message
    return None


@needs_fast
@pytest.mark.parametrize("schema", TRUSTED, ids=[str(i) for i in range(len(TRUSTED))])
def test_trusted_schemas_get_the_compiled_validator(schema: Any) -> None:
    assert _version(schema, True).params_fast is not None
    assert _version(schema, False).params_fast is None


def _agree(schema: Any, instance: Any) -> None:
    fast, reference = _version(schema, True), _version(schema, False)
    # the property that matters: "valid" from the compiled validator is never wrong
    assert fast.params_fast is not None
    if fast.params_fast(instance):
        assert reference.params_validator.is_valid(instance), (schema, instance)
    # and what callers see (verdict, path, message) is the reference's, always
    assert _outcome(fast, instance) == _outcome(reference, instance)


def _edge_instances() -> list[Any]:
    """Every edge value alone, in arrays and under every key: random structure rarely
    puts the one value that matters under the one key that is checked."""
    out: list[Any] = []
    for v in EDGES:
        out += [v, [v], [v, v], [1, v], [v, 0.7, 2], {"text": "x", "b": v}]
        out += [{k: v} for k in KEYS]
        out += [{"kind": "x", k: v} for k in KEYS]
    return out


@needs_fast
@pytest.mark.parametrize("schema", TRUSTED, ids=[str(i) for i in range(len(TRUSTED))])
def test_compiled_and_reference_agree_on_edge_values(schema: Any) -> None:
    for instance in _edge_instances():
        _agree(schema, instance)


@needs_fast
@pytest.mark.parametrize("schema", TRUSTED, ids=[str(i) for i in range(len(TRUSTED))])
@PROPS
@given(instance=json_values)
def test_compiled_and_reference_agree_on_any_json(schema: Any, instance: Any) -> None:
    _agree(schema, instance)


class Colour(enum.Enum):
    RED = "red"


class Count(enum.IntEnum):
    ONE = 1


@pytest.mark.parametrize(("schema", "instance"), [
    ({"type": "array"}, (1, 2)),  # the compiled one reads a tuple as an array
    ({"type": "string"}, Colour.RED),  # ... and a str-valued enum as a string
    ({"type": "integer", "maximum": 2.0**53}, 2**53 + 1),  # may round on the Rust side
    ({"type": "integer"}, Count.ONE),
    ({"type": "object"}, {1: "a"}),  # it refuses non-string keys
    ({"type": "number", "maximum": 1}, float("nan")),
    ({"type": "string"}, b"x"),
])
def test_instances_that_are_not_plain_json_get_the_reference_verdict(
        schema: Any, instance: Any) -> None:
    assert _outcome(_version(schema, True), instance) == _outcome(_version(schema, False),
                                                                  instance)


@pytest.mark.parametrize(("schema", "instance"), [
    ({"type": "string", "pattern": "^a$"}, "a\n"),  # Python's $ matches before a final \n
    ({"type": "string", "pattern": "^\\d+$"}, "\u0661\u0662"),  # \d beyond ASCII
    ({"properties": {"x": {"multipleOf": 0.1}}}, {"x": 0.3}),  # float division: not a multiple
    ({"patternProperties": {"^a$": {"type": "integer"}}}, {"a\n": "s"}),
    ({"$ref": "https://example.invalid/schema.json"}, 1),
    ({"properties": {"x": {"$id": "https://example.invalid/x", "type": "string"}}}, {"x": 1}),
    ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"}, 1),
    ({"type": "string", "x-custom": True}, "s"),
])
def test_schemas_the_two_read_differently_are_left_to_the_reference(
        schema: Any, instance: Any) -> None:
    version = _version(schema, True)
    assert version.params_fast is None
    try:
        expected = _outcome(_version(schema, False), instance)
    except Exception as exc:  # an unresolvable remote $ref fails the same way, whoever checks
        with pytest.raises(type(exc)):
            _outcome(version, instance)
    else:
        assert _outcome(version, instance) == expected


def test_errors_keep_the_reference_path_and_text() -> None:
    docs = {"plugin": {"greet": {"1.0": {
        "params": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 4}},
                   "required": ["name"], "additionalProperties": False},
        "result": {"type": "object", "properties": {"text": {"type": "string"}},
                   "required": ["text"]},
    }}}}
    outcomes = []
    for fast in (True, False):
        greet = InterfaceSet.from_documents(docs, fast=fast).plugin["greet"].current
        assert (greet.params_fast is not None) is (fast and fast_validation_available())
        greet.check("params", {"name": "Ada"})
        greet.check("result", {"text": "hi", "extra": 1})
        seen = []
        for part, bad in (("params", {"name": "Adelaide"}), ("params", {"name": "A", "x": 1}),
                          ("result", {"text": 5}), ("params", [])):
            with pytest.raises(InterfaceViolation) as info:
                greet.check(part, bad)
            seen.append(info.value.to_data())
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0]["path"] == "$.name"
    assert "is too long" in outcomes[0][0]["fault"]


@pytest.mark.skipif(fast_validation_available(), reason="jsonschema-rs is installed")
def test_without_the_package_only_the_reference_validates() -> None:
    assert _version(TRUSTED[0], True).params_fast is None
