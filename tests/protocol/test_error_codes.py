"""Error codes: the standard ones pinned to the spec, pipevisor's kept apart."""

from __future__ import annotations

import pytest

from pipevisor.protocol.errors import (
    LOCAL_CODES,
    PLUGIN_CODES,
    STANDARD_MESSAGES,
    ErrorCode,
    ErrorObject,
    is_local_code,
    local_error,
    standard_error,
)

SPEC = {
    -32700: "Parse error",
    -32600: "Invalid Request",
    -32601: "Method not found",
    -32602: "Invalid params",
    -32603: "Internal error",
}
STANDARD = {
    ErrorCode.PARSE_ERROR: -32700,
    ErrorCode.INVALID_REQUEST: -32600,
    ErrorCode.METHOD_NOT_FOUND: -32601,
    ErrorCode.INVALID_PARAMS: -32602,
    ErrorCode.INTERNAL_ERROR: -32603,
}
PIPEVISOR = [code for code in ErrorCode if code not in STANDARD]
RESERVED = range(-32768, -32000 + 1)


def test_standard_codes_have_the_spec_values() -> None:
    for member, value in STANDARD.items():
        assert int(member) == value


def test_standard_messages_are_the_spec_texts() -> None:
    assert {int(k): v for k, v in STANDARD_MESSAGES.items()} == SPEC


@pytest.mark.parametrize("code", list(STANDARD))
def test_standard_error_uses_canonical_message(code: ErrorCode) -> None:
    error = standard_error(code, "detail")
    assert error == ErrorObject(STANDARD[code], SPEC[STANDARD[code]], "detail")
    assert error.to_json() == {"code": STANDARD[code], "message": SPEC[STANDARD[code]],
                               "data": "detail"}
    assert standard_error(code).to_json() == {"code": STANDARD[code],
                                              "message": SPEC[STANDARD[code]]}
    assert not error.is_local


def test_the_reserved_block_holds_only_the_standard_codes() -> None:
    assert PIPEVISOR
    for code in ErrorCode:
        assert (code in RESERVED) == (code in STANDARD), code


@pytest.mark.parametrize("code", PIPEVISOR, ids=[c.name for c in PIPEVISOR])
def test_pipevisor_code_is_local_xor_plugin(code: ErrorCode) -> None:
    assert int(code) not in RESERVED
    assert (code in LOCAL_CODES) != (code in PLUGIN_CODES)


def test_local_and_plugin_ranges() -> None:
    assert set(LOCAL_CODES).isdisjoint(PLUGIN_CODES)
    assert min(LOCAL_CODES) == -31049 and max(LOCAL_CODES) == -31000
    assert min(PLUGIN_CODES) == -31099 and max(PLUGIN_CODES) == -31050
    for block in (LOCAL_CODES, PLUGIN_CODES):
        assert set(block).isdisjoint(RESERVED)
    assert ErrorCode.PLUGIN_CRASHED in LOCAL_CODES
    assert ErrorCode.CONNECTION_CLOSED in LOCAL_CODES
    assert ErrorCode.UNSUPPORTED_PROTOCOL_VERSION in PLUGIN_CODES


def test_codes_are_unique() -> None:
    assert len({int(c) for c in ErrorCode}) == len(list(ErrorCode))


@pytest.mark.parametrize("code", [c for c in PIPEVISOR if c in LOCAL_CODES])
def test_local_error_accepts_local_codes(code: ErrorCode) -> None:
    error = local_error(code, "it died", pid=12)
    assert error.code == int(code)
    assert error.message == "it died"
    assert error.data == {"origin": "pipevisor", "pid": 12}
    assert error.is_local and is_local_code(error.code)


@pytest.mark.parametrize("code", [c for c in ErrorCode if c not in LOCAL_CODES])
def test_local_error_rejects_non_local_codes(code: ErrorCode) -> None:
    assert not is_local_code(code)
    with pytest.raises(ValueError):
        local_error(code, "nope")


@pytest.mark.parametrize("code", [-30999, -31050, -32000, 0, 1, -31100])
def test_is_local_code_boundaries(code: int) -> None:
    assert not is_local_code(code)


def test_error_object_omits_null_data() -> None:
    assert ErrorObject(1, "x").to_json() == {"code": 1, "message": "x"}
    assert ErrorObject(1, "x", 0).to_json() == {"code": 1, "message": "x", "data": 0}
