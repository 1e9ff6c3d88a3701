"""Versions, negotiation, the handshake messages and the schema files."""

from __future__ import annotations

import copy
import json
from importlib import resources
from types import MappingProxyType
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pipevisor.protocol.errors import ErrorCode, HandshakeError, VersionError
from pipevisor.protocol.handshake import (
    PROTOCOL_VERSIONS,
    HandshakeParams,
    HandshakeResult,
    MethodInfo,
    check_params,
    choose_version,
    is_reserved,
    unsupported_version,
)
from pipevisor.protocol.schema_store import first_error, schema_names
from pipevisor.protocol.versions import Version, VersionRange, negotiate


def V(text: str) -> Version:
    return Version.parse(text)


def R(low: str, high: str) -> VersionRange:
    return VersionRange(V(low), V(high))


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize("text", ["0.0", "1.0", "1.10", "10.999999", "999999.0"])
def test_version_parse_accepts(text: str) -> None:
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    ["1", "01.0", "1.01", "1.0.0", "", ".", "1.", ".1", "-1.0", "1.-0", " 1.0", "1.0 ",
     "1.0\n", "a.b", "1,0", "\uff11.\uff10", "1000000.0", "1_0.0"],
)
def test_version_parse_rejects_strings(text: str) -> None:
    with pytest.raises(VersionError):
        Version.parse(text)


@pytest.mark.parametrize("value", [1, 1.0, None, b"1.0", ["1", "0"], {"major": 1}])
def test_version_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(VersionError):
        Version.parse(value)


def test_versions_compare_as_integers() -> None:
    assert V("1.10") > V("1.9")
    assert V("2.0") > V("1.99")
    assert V("1.2") == Version(1, 2)
    assert sorted(map(V, ["1.10", "1.9", "0.5", "1.0"])) == list(
        map(V, ["0.5", "1.0", "1.9", "1.10"]))


def test_version_range() -> None:
    r = VersionRange.parse({"min": "1.2", "max": "1.10"})
    assert r == R("1.2", "1.10")
    assert V("1.9") in r and V("1.2") in r and V("1.10") in r
    assert V("1.1") not in r and V("1.11") not in r and "1.5" not in r
    assert VersionRange.parse("1.3") == R("1.3", "1.3")
    assert r.to_json() == {"min": "1.2", "max": "1.10"}
    with pytest.raises(VersionError):
        R("1.3", "1.2")
    for bad in ({"min": "1.0"}, {"min": "1.0", "max": "1.1", "x": 1}, ["1.0", "1.1"], 1):
        with pytest.raises(VersionError):
            VersionRange.parse(bad)


@pytest.mark.parametrize(
    ("ours", "theirs", "want"),
    [
        (R("1.0", "1.5"), R("1.3", "2.0"), "1.5"),
        (R("1.3", "2.0"), R("1.0", "1.5"), "1.5"),
        (R("1.0", "1.10"), R("1.9", "1.9"), "1.9"),
        (R("1.0", "1.10"), R("1.2", "3.0"), "1.10"),
        (R("1.0", "1.0"), R("1.0", "1.0"), "1.0"),
    ],
)
def test_negotiate_picks_the_highest_common_version(
    ours: VersionRange, theirs: VersionRange, want: str
) -> None:
    assert negotiate(ours, theirs) == V(want)


def test_negotiate_without_overlap_names_both_ranges() -> None:
    with pytest.raises(VersionError) as info:
        negotiate(R("1.0", "1.4"), R("2.0", "2.3"))
    assert "1.0..1.4" in str(info.value)
    assert "2.0..2.3" in str(info.value)


# ------------------------------------------------------------------- params


def full_params() -> HandshakeParams:
    return HandshakeParams(
        plugin_name="resize",
        host_name="pipevisor",
        host_version="0.1.0",
        host_pid=1234,
        instance=2,
        protocol_versions=PROTOCOL_VERSIONS,
        interfaces=MappingProxyType({"image.resize": ("1.0", "1.1")}),
        host_methods=MappingProxyType({"host.read": ("1.0",)}),
        limits=MappingProxyType({"memoryBytes": 1 << 20, "callTimeoutSeconds": None}),
        cancel=True,
        min_log_level="warning",
    )


def test_handshake_params_round_trip() -> None:
    params = full_params()
    wire = params.to_json()
    json.dumps(wire)  # plain JSON
    assert first_error("handshake.params", wire) is None
    assert HandshakeParams.from_json(wire) == params
    minimal = HandshakeParams(plugin_name="p", cancel=False)
    assert HandshakeParams.from_json(minimal.to_json()) == minimal


def test_handshake_params_defaults_from_minimal_json() -> None:
    wire = {"protocol": "pipevisor", "protocolVersions": {"min": "1.0", "max": "1.2"},
            "host": {"name": "h", "version": "1"}, "plugin": {"name": "p"}}
    params = HandshakeParams.from_json(wire)
    assert params.plugin_name == "p"
    assert params.instance == 0
    assert params.host_pid is None
    assert params.protocol_versions == R("1.0", "1.2")
    assert params.min_log_level == "debug"


def _mutated(path: list[str], value: Any) -> dict[str, Any]:
    wire = copy.deepcopy(full_params().to_json())
    target = wire
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return wire


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "json_path"),
    [
        (["plugin", "name"], 3, "$.plugin.name"),
        (["plugin", "instance"], -1, "$.plugin.instance"),
        (["host", "pid"], 0, "$.host.pid"),
        (["protocolVersions", "max"], "1.0.0", "$.protocolVersions.max"),
        (["protocol"], "other", "$.protocol"),
        (["capabilities", "log", "minLevel"], "loud", "$.capabilities.log.minLevel"),
        (["interfaces", "image.resize"], [], "$.interfaces"),
        (["limits", "maxLineBytes"], 0, "$.limits.maxLineBytes"),
    ],
)
def test_handshake_params_invalid_names_the_json_path(
    path: list[str], value: Any, json_path: str
) -> None:
    with pytest.raises(HandshakeError) as info:
        HandshakeParams.from_json(_mutated(path, value))
    error = info.value.error
    assert error.code == ErrorCode.INVALID_PARAMS
    assert error.message == "Invalid params"
    assert isinstance(error.data, str)
    assert json_path in error.data


@pytest.mark.parametrize("missing", ["protocol", "protocolVersions", "host", "plugin"])
def test_handshake_params_missing_member(missing: str) -> None:
    with pytest.raises(HandshakeError) as info:
        HandshakeParams.from_json(_mutated([missing], _DELETE))
    assert missing in str(info.value.error.data)


@pytest.mark.parametrize("value", [None, [], "x", 1])
def test_handshake_params_not_an_object(value: Any) -> None:
    with pytest.raises(HandshakeError):
        HandshakeParams.from_json(value)


def test_check_params_other_schemas() -> None:
    check_params("cancel.params", {"id": 3, "reason": "user"})
    check_params("log.params", {"level": "info", "message": "hi"})
    with pytest.raises(HandshakeError) as info:
        check_params("log.params", {"level": "info", "message": 5})
    assert "$.message" in str(info.value.error.data)
    with pytest.raises(HandshakeError):
        check_params("cancel.params", {"id": [1]})


# ------------------------------------------------------------------- result


def full_result() -> HandshakeResult:
    return HandshakeResult(
        protocol_version=V("1.0"),
        plugin_name="resize",
        plugin_version="2.3.4",
        methods=MappingProxyType({
            "image.resize": MethodInfo(V("1.1"), "Resize an image"),
            "image.noop": MethodInfo(),
        }),
        cancel=True,
        progress=True,
        shutdown=True,
        max_concurrency=4,
    )


def test_handshake_result_round_trip() -> None:
    result = full_result()
    wire = result.to_json()
    json.dumps(wire)
    assert first_error("handshake.result", wire) is None
    assert HandshakeResult.from_json(wire) == result
    bare = HandshakeResult(V("1.0"), "p", "0", MappingProxyType({}))
    assert HandshakeResult.from_json(bare.to_json()) == bare


def test_handshake_result_version_outside_offered_range() -> None:
    wire = full_result().to_json()
    wire["protocolVersion"] = "2.0"
    with pytest.raises(HandshakeError) as info:
        HandshakeResult.from_json(wire, offered=R("1.0", "1.3"))
    error = info.value.error
    assert error.code == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    assert error.data == {"supported": {"min": "1.0", "max": "1.3"},
                          "requested": {"min": "2.0", "max": "2.0"}}
    wire["protocolVersion"] = "1.3"
    assert HandshakeResult.from_json(wire, offered=R("1.0", "1.3")).protocol_version == V("1.3")


@pytest.mark.parametrize("name", ["pipevisor/x", "rpc.x", "$/x", "pipevisor/handshake"])
def test_handshake_result_rejects_reserved_method_names(name: str) -> None:
    assert is_reserved(name)
    wire = full_result().to_json()
    wire["methods"][name] = {}
    with pytest.raises(HandshakeError) as info:
        HandshakeResult.from_json(wire)
    assert info.value.error.code == ErrorCode.INVALID_RESPONSE
    assert name in info.value.error.message


@pytest.mark.parametrize("name", ["pipevisor", "rpc", "rpcx", "$", "x/pipevisor/", "image.rpc."])
def test_unreserved_names(name: str) -> None:
    assert not is_reserved(name)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: w.pop("protocolVersion"),
        lambda w: w.update(protocolVersion="1"),
        lambda w: w.update(protocolVersion=1.0),
        lambda w: w.pop("methods"),
        lambda w: w.update(methods=[]),
        lambda w: w["methods"].update({"": {}}),
        lambda w: w["methods"].update({"x": {"version": "v1"}}),
        lambda w: w["methods"].update({"x": "not an object"}),
        lambda w: w.update(plugin={"name": "p"}),
        lambda w: w["capabilities"].update(maxConcurrency=0),
        lambda w: w["capabilities"].update(cancel="yes"),
    ],
)
def test_handshake_result_malformed(mutate: Any) -> None:
    wire = full_result().to_json()
    mutate(wire)
    with pytest.raises(HandshakeError) as info:
        HandshakeResult.from_json(wire)
    assert info.value.error.code == ErrorCode.INVALID_RESPONSE
    assert info.value.error.is_local


@pytest.mark.parametrize("value", [None, [], "1.0", 7])
def test_handshake_result_not_an_object(value: Any) -> None:
    with pytest.raises(HandshakeError):
        HandshakeResult.from_json(value)


# ----------------------------------------------------------- choose_version


def test_choose_version_highest_common() -> None:
    params = HandshakeParams(plugin_name="p", protocol_versions=R("1.0", "1.9"))
    assert choose_version(params, R("1.2", "1.10")) == V("1.9")
    assert choose_version(params, R("0.1", "1.0")) == V("1.0")


def test_choose_version_no_overlap() -> None:
    params = HandshakeParams(plugin_name="p", protocol_versions=R("2.0", "2.1"))
    with pytest.raises(HandshakeError) as info:
        choose_version(params, R("1.0", "1.10"))
    error = info.value.error
    assert error.code == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    assert error.data == {"supported": {"min": "1.0", "max": "1.10"},
                          "requested": {"min": "2.0", "max": "2.1"}}
    assert "1.0..1.10" in error.message and "2.0..2.1" in error.message


def test_unsupported_version_default_message_names_both() -> None:
    error = unsupported_version(R("1.0", "1.1"), R("3.0", "3.0"))
    assert error.code == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    assert "1.0..1.1" in error.message and "3.0" in error.message
    assert not error.is_local


# ------------------------------------------------------------------ schemas

SCHEMA_FILES = sorted(
    entry.name for entry in resources.files("pipevisor.protocol").joinpath("schemas").iterdir()
    if entry.name.endswith(".json")
)


def test_schema_files_are_found() -> None:
    assert "handshake.params.json" in SCHEMA_FILES
    assert "handshake.result.json" in SCHEMA_FILES
    assert schema_names() == [name.removesuffix(".json") for name in SCHEMA_FILES]


@pytest.mark.parametrize("filename", SCHEMA_FILES)
def test_schema_file_is_a_valid_2020_12_schema(filename: str) -> None:
    text = resources.files("pipevisor.protocol").joinpath("schemas", filename).read_text("utf-8")
    document = json.loads(text)
    Draft202012Validator.check_schema(document)
    assert document.get("$schema") == "https://json-schema.org/draft/2020-12/schema"
    assert isinstance(document.get("$id"), str)
    assert document["$id"].endswith("/" + filename)


def test_schema_ids_are_unique() -> None:
    ids = [
        json.loads(resources.files("pipevisor.protocol").joinpath("schemas", f)
                   .read_text("utf-8"))["$id"]
        for f in SCHEMA_FILES
    ]
    assert len(set(ids)) == len(ids)
