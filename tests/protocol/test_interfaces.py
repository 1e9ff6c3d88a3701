"""The interface model: document checks, the minor rule, negotiation, down-conversion."""

from __future__ import annotations

from typing import Any

import pytest

from pipevisor.protocol.interfaces import (
    Checks,
    How,
    InterfaceError,
    InterfaceSet,
    InterfaceViolation,
    negotiate,
    negotiate_method,
    prune,
)
from pipevisor.protocol.versions import Version

V = Version.parse


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


S = {"type": "string"}
GREET: dict[str, dict[str, Any]] = {
    "1.0": {"params": obj(["name"], name=S), "result": obj(["text"], text=S)},
    "1.1": {"params": obj(["name"], name=S, punctuation=S),
            "result": obj(["text"], text=S, lang=S)},
    "1.2": {"params": obj(["name"], name=S, punctuation=S, loud={"type": "boolean"}),
            "result": obj(["text"], text=S, lang=S), "deprecated": "use 2.x"},
}


def iset(**extra: dict[str, Any]) -> InterfaceSet:
    return InterfaceSet.from_documents({"plugin": {"greet": {**GREET, **extra}}})


def test_offer_lists_every_version_in_order() -> None:
    assert iset().offer() == {"greet": ("1.0", "1.1", "1.2")}


def test_a_schema_that_breaks_the_meta_schema_names_the_source_and_fault() -> None:
    with pytest.raises(InterfaceError) as info:
        InterfaceSet.from_documents(
            {"plugin": {"greet": {"1.0": {"params": {"type": "strnig"}, "result": True}}}},
            {("plugin", "greet", "1.0"): "/x/plugin/greet/1.0.json"})
    assert info.value.source == "/x/plugin/greet/1.0.json"
    assert "params is not a valid JSON Schema" in str(info.value)
    assert "type" in str(info.value)


@pytest.mark.parametrize("doc, fault", [
    ([], "must be a JSON object"),
    ({"params": True}, "missing 'result'"),
    ({"params": True, "result": True, "extra": 1}, "unknown keys ['extra']"),
    ({"params": True, "result": True, "deprecated": 3}, "deprecated must be"),
])
def test_malformed_documents(doc: Any, fault: str) -> None:
    with pytest.raises(InterfaceError, match=fault.replace("[", r"\[").replace("]", r"\]")):
        InterfaceSet.from_documents({"plugin": {"m": {"1.0": doc}}})


def test_bad_version_name_and_direction() -> None:
    with pytest.raises(InterfaceError, match=r"MAJOR\.MINOR"):
        InterfaceSet.from_documents({"plugin": {"m": {"1": {"params": True, "result": True}}}})
    with pytest.raises(InterfaceError, match="unknown directions"):
        InterfaceSet.from_documents({"plugins": {}})


def test_a_minor_that_adds_a_required_member_is_rejected() -> None:
    bad = {"params": obj(["name", "loud"], name=S, loud=S), "result": obj(["text"], text=S)}
    with pytest.raises(InterfaceError, match=r"makes \['loud'\] required.*new major"):
        iset(**{"1.3": bad})


def test_a_minor_that_changes_a_type_is_rejected() -> None:
    bad = {"params": obj(["name"], name={"type": "integer"}), "result": obj(["text"], text=S)}
    with pytest.raises(InterfaceError, match=r"\$\.name changes type"):
        iset(**{"1.3": bad})


def test_a_new_major_may_change_anything() -> None:
    two = {"params": obj(["person"], person=obj(["name"], name=S)),
           "result": obj(["message"], message=S)}
    assert iset(**{"2.0": two}).plugin["greet"].current.version == V("2.0")


def test_exact_binding_validates_without_converting() -> None:
    b = negotiate_method(iset().plugin["greet"], "greet", V("1.2"))
    assert b.how is How.EXACT and b.wire == V("1.2")
    assert b.deprecated == "use 2.x"
    payload = {"name": "a", "loud": True, "x": 1}
    assert b.outgoing(payload) is payload
    with pytest.raises(InterfaceViolation) as info:
        b.outgoing({"name": 5})
    assert info.value.path == "$.name" and info.value.part == "params"


def test_plugin_two_minors_behind_gets_params_down_converted() -> None:
    b = negotiate_method(iset().plugin["greet"], "greet", V("1.0"))
    assert (b.how, b.host, b.plugin, b.wire) == (How.DOWN_CONVERTED, V("1.2"), V("1.0"),
                                                 V("1.0"))
    assert b.outgoing({"name": "a", "punctuation": "!", "loud": True}) == {"name": "a"}
    assert b.incoming({"text": "hi", "lang": "en"}) == {"text": "hi"}
    with pytest.raises(InterfaceViolation) as info:
        b.incoming({"text": 1})
    assert info.value.part == "result" and info.value.version == V("1.0")


def test_plugin_a_minor_ahead_gets_its_newer_result_members_dropped() -> None:
    b = negotiate_method(iset().plugin["greet"], "greet", V("1.7"))
    assert b.how is How.DOWN_CONVERTED and b.wire == V("1.2")
    assert b.outgoing({"name": "a", "loud": True}) == {"name": "a", "loud": True}
    assert b.incoming({"text": "t", "lang": "en", "mood": "new"}) == {"text": "t", "lang": "en"}


def test_a_major_behind_without_adapter_is_disabled_naming_both_versions() -> None:
    two = {"params": obj(["person"], person=obj(["name"], name=S)),
           "result": obj(["message"], message=S)}
    b = negotiate_method(iset(**{"2.0": two}).plugin["greet"], "greet", V("1.1"))
    assert b.how is How.DISABLED and b.degraded
    assert b.reason is not None and "1.1" in b.reason and "2.0" in b.reason


def test_a_major_behind_with_adapter_converts_both_ways() -> None:
    two = {"params": obj(["person"], person=obj(["name"], name=S)),
           "result": obj(["message"], message=S)}

    def adapters(method: str, host: int, plugin: int) -> Any:
        assert (method, host, plugin) == ("greet", 2, 1)
        return (lambda p: {"name": p["person"]["name"], "junk": 1},
                lambda r: {"message": r["text"]})

    b = negotiate_method(iset(**{"2.0": two}).plugin["greet"], "greet", V("1.1"), adapters)
    assert b.how is How.ADAPTER and b.wire == V("1.1")
    assert b.outgoing({"person": {"name": "a"}}) == {"name": "a"}  # pruned to 1.1 after
    assert b.incoming({"text": "hi", "lang": "en"}) == {"message": "hi"}
    with pytest.raises(InterfaceViolation):
        b.outgoing({"person": {}})  # checked against the caller's 2.0 first


def test_a_major_ahead_without_adapter_is_disabled() -> None:
    b = negotiate_method(iset().plugin["greet"], "greet", V("3.0"))
    assert b.how is How.DISABLED and "3.0" in (b.reason or "") and "1.2" in (b.reason or "")


def test_unversioned_and_unknown_methods() -> None:
    bindings = negotiate(iset(), {"greet": None, "other": V("1.0")})
    assert bindings["greet"].how is How.UNVERSIONED
    assert bindings["greet"].incoming({"text": 1}) == {"text": 1}  # results not validated
    assert bindings["other"].how is How.NO_INTERFACE
    assert bindings["other"].outgoing([1, 2]) == [1, 2]


def test_checks_can_be_switched_off_per_direction() -> None:
    off = negotiate_method(iset().plugin["greet"], "greet", V("1.2"), checks=Checks(False, False))
    assert off.outgoing({"name": 5}) == {"name": 5}
    assert off.incoming({"text": 5}) == {"text": 5}
    half = negotiate_method(iset().plugin["greet"], "greet", V("1.2"),
                            checks=Checks(params=True, results=False))
    with pytest.raises(InterfaceViolation):
        half.outgoing({"name": 5})
    assert half.incoming({}) == {}


def test_prune_follows_local_refs_items_and_additional_properties() -> None:
    schema = {
        "$defs": {"item": obj(["a"], a=S)},
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
                       "free": {"type": "object"},
                       "map": {"type": "object", "properties": {},
                               "additionalProperties": {"type": "integer"}}},
    }
    doc = {"items": [{"a": "x", "b": 1}], "free": {"k": 1}, "map": {"z": 2}, "gone": 1}
    assert prune(doc, schema, schema) == {"items": [{"a": "x"}], "free": {"k": 1},
                                          "map": {"z": 2}}


def test_validators_are_compiled_once_per_version() -> None:
    s = iset()
    v = s.plugin["greet"].versions[V("1.0")]
    first = v.params_validator
    negotiate_method(s.plugin["greet"], "greet", V("1.0"))
    assert v.params_validator is first
