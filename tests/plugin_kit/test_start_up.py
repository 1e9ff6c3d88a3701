"""The kit's start-up path: a plain handshake answered without protocol, everything else by it.

plugin.py answers the usual first line with json alone so that neither
protocol (orjson) nor asyncio is imported before the handshake answer. These
tests hold that shortcut to protocol's own answers, over real pipes where the
two paths can be compared, and in process where protocol's functions can be
called directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import pytest

from pipevisor.kit import Plugin
from pipevisor.kit.plugin import _RESERVED_PREFIXES, KIT_VERSIONS, parse_range, parse_version
from pipevisor.protocol import (
    PROTOCOL_VERSIONS,
    ErrorCode,
    HandshakeResult,
    MethodInfo,
    Version,
    VersionError,
    VersionRange,
)
from pipevisor.protocol.handshake import RESERVED_PREFIXES
from tests.plugin_kit.pipes import DEADLINE, HANDSHAKE, running

SYNC_PLUGIN = str(Path(__file__).resolve().parent / "sync_plugin.py")
ROOT = Path(__file__).resolve().parents[2]

VERSION_TEXTS = ["1.0", "0.0", "10.20", "123456.654321", "1234567.0", "01.0", "1.00", "1",
                 "1.", ".1", "1.0.0", "a.b", "1.a", "", " 1.0", "1.0 ", "-1.0", "+1.0", "1_0.0",
                 "0x1.0", "\u0661.\u0660", "\u00b2.0"]  # Arabic-Indic digits, superscript 2


# ------------------------------------------------------------- in process

@pytest.mark.parametrize("text", [*VERSION_TEXTS, None, 1, 1.0, ["1.0"]])
def test_version_parsing_agrees_with_protocol(text: Any) -> None:
    try:
        expected: tuple[int, int] | None = (lambda v: (v.major, v.minor))(Version.parse(text))
    except VersionError:
        expected = None
    try:
        got: tuple[int, int] | None = parse_version(text)
    except ValueError:
        got = None
    assert got == expected


@pytest.mark.parametrize("value", [
    {"min": "1.0", "max": "1.0"}, {"min": "1.0", "max": "2.5"}, {"min": "2.0", "max": "1.0"},
    "1.3", "1", {"min": "1.0"}, {"min": "1.0", "max": "1.0", "x": 1}, {"min": 1, "max": "1.0"},
    None, [], ["1.0", "1.0"], 7,
])
def test_range_parsing_agrees_with_protocol(value: Any) -> None:
    try:
        r = VersionRange.parse(value)
        expected: Any = ((r.min.major, r.min.minor), (r.max.major, r.max.minor))
    except VersionError:
        expected = None
    assert parse_range(value) == expected


def test_constants_agree_with_protocol() -> None:
    ours = PROTOCOL_VERSIONS
    expected = ((ours.min.major, ours.min.minor), (ours.max.major, ours.max.minor))
    assert expected == KIT_VERSIONS
    assert _RESERVED_PREFIXES == RESERVED_PREFIXES
    assert Plugin("p").protocol_versions == PROTOCOL_VERSIONS


@pytest.mark.parametrize("max_concurrency", [None, 3])
def test_handshake_result_agrees_with_protocol(max_concurrency: int | None) -> None:
    plugin = Plugin("p☃", version="9.8.7-rc1", max_concurrency=max_concurrency)
    plugin.method("a", version="1.2", description="does a")(lambda: None)
    plugin.method("b", version=None)(lambda: None)
    plugin.method("c.d", version="10.0")(lambda: None)
    expected = HandshakeResult(
        protocol_version=Version(1, 0), plugin_name="p☃", plugin_version="9.8.7-rc1",
        methods=MappingProxyType({"a": MethodInfo(Version(1, 2), "does a"),
                                  "b": MethodInfo(None, None),
                                  "c.d": MethodInfo(Version(10, 0), None)}),
        cancel=True, progress=True, shutdown=True, max_concurrency=max_concurrency,
    ).to_json()
    assert plugin._handshake_result((1, 0)) == expected


def _line(**changes: Any) -> bytes:
    message: dict[str, Any] = {**HANDSHAKE, **changes}
    return json.dumps(message, separators=(",", ":")).encode()


@pytest.mark.parametrize("line", [
    b"not json",
    b"\xff\xfe",
    b"[" + _line() + b"]",  # a batch
    _line(id=0.5),
    _line(id=None),
    _line(id=True),
    _line(id=1 << 64),  # orjson reads it as a float
    _line(method="pipevisor/ping"),
    _line(jsonrpc="1.0"),
    _line(result=1),
    _line(params=[]),
    _line(params={"protocolVersions": {"min": "2.0", "max": "3.0"}}),  # no overlap
    _line(params={"protocolVersions": "x"}),
    _line(params={"protocolVersions": {"min": "1.0"}, "n": float("nan")}),
    _line(params={"protocolVersions": "1.0", "n": 1e308}).replace(b"1e+308", b"1e999"),
    _line(params={"protocolVersions": "1.0", "host": {"name": "\ud800"}}),  # json escapes it
    _line(params={"protocolVersions": "1.0", "host": {"name": "\u2028"}}),
])
def test_fast_path_leaves_anything_unusual_to_protocol(line: bytes) -> None:
    assert Plugin("p")._fast_handshake(line) is None


def test_fast_path_answers_a_plain_handshake_and_takes_its_params() -> None:
    plugin = Plugin("p")
    params = {**HANDSHAKE["params"], "limits": {"maxLineBytes": 4096},
              "capabilities": {"log": {"minLevel": "error"}}}
    answer = plugin._fast_handshake(_line(id="h-1", params=params))
    assert answer is not None and answer.endswith(b"\n") and answer.count(b"\n") == 1
    assert json.loads(answer) == {"jsonrpc": "2.0", "id": "h-1",
                                  "result": plugin._handshake_result((1, 0))}
    assert plugin.max_line_bytes == 4096
    assert plugin.host_methods == {"host.q": ("1.0",)}
    assert plugin._min_log_rank == 4  # error
    assert plugin.protocol_version == Version(1, 0)


# ------------------------------------------------------------- over pipes

@pytest.mark.anyio
async def test_fast_and_protocol_paths_answer_the_handshake_alike() -> None:
    answers = []
    for ident, fast in ((7, True), (7.5, False)):  # a float id is left to protocol
        async with running(handshake=False) as p:
            answers.append(await p.request(ident, HANDSHAKE["method"], HANDSHAKE["params"]))
            internals = (await p.request(1, "internals"))["result"]
            assert internals["fast"] is fast
            assert internals["protocolVersion"] == "1.0"
            # after either path: calls, a second handshake refused, a clean exit
            assert (await p.request(2, "echo", {"text": "x"}))["result"] == {"text": "x"}
            again = await p.request(3, HANDSHAKE["method"], HANDSHAKE["params"])
            assert again["error"]["code"] == ErrorCode.INVALID_REQUEST
            await p.close_stdin()
            assert await p.wait() == 0
    assert answers[0]["result"] == answers[1]["result"]


@pytest.mark.anyio
async def test_lines_before_the_handshake_are_answered_by_protocol() -> None:
    async with running(handshake=False) as p:
        assert p.process.stdin is not None
        await p.process.stdin.send(b"\r\n  \n")  # blank lines: skipped
        await p.process.stdin.send(b"garbage\n")
        assert (await p.read())["error"]["code"] == ErrorCode.PARSE_ERROR
        assert (await p.request(1, "echo", {"text": "x"}))["error"]["code"] == (
            ErrorCode.NOT_INITIALIZED)
        answer = await p.request(2, HANDSHAKE["method"], HANDSHAKE["params"])
        assert answer["result"]["protocolVersion"] == "1.0"
        assert (await p.request(3, "internals"))["result"]["fast"] is False
        assert (await p.request(4, "echo", {"text": "y"}))["result"] == {"text": "y"}


@pytest.mark.anyio
async def test_a_handshake_without_newline_before_eof_is_answered() -> None:
    async with running(handshake=False) as p:
        assert p.process.stdin is not None
        await p.process.stdin.send(_line())
        await p.close_stdin()
        assert "result" in await p.answer_to(0)
        assert await p.wait() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("ident", [0, 0.5])  # the fast path, and protocol's
async def test_the_handshakes_max_line_bytes_is_enforced(ident: float) -> None:
    params = {**HANDSHAKE["params"], "limits": {"maxLineBytes": 2000}}
    async with running(handshake=False) as p:
        assert "result" in await p.request(ident, HANDSHAKE["method"], params)
        assert (await p.request(1, "internals"))["result"]["maxLineBytes"] == 2000
        assert (await p.request(2, "echo", {"text": "a" * 1900}))["result"] == {
            "text": "a" * 1900}
        await p.send(id=3, method="echo", params={"text": "b" * 2000})  # > 2000 bytes
        answer = await p.read()
        assert answer["id"] is None and answer["error"]["code"] == ErrorCode.PARSE_ERROR
        assert (await p.request(4, "echo", {"text": "c"}))["result"] == {"text": "c"}
        await p.close_stdin()
        assert await p.wait() == 0
        assert p.process.stderr is not None
        with anyio.fail_after(DEADLINE):
            err = b"".join([chunk async for chunk in p.process.stderr])
        assert b"exceeds the limit of 2000 bytes" in err


@pytest.mark.anyio
async def test_a_plugin_with_sync_handlers_only_never_imports_asyncio() -> None:
    async with running(SYNC_PLUGIN) as p:
        assert (await p.request(1, "loaded"))["result"] == []
        await p.send(id=2, method="ask", params={"method": "host.q"})
        call = await p.read()
        await p.send(id=call["id"], result={"a": 1})
        assert (await p.answer_to(2))["result"] == {"a": 1}
        assert (await p.request(3, "pipevisor/ping"))["result"] == {}
        assert (await p.request(4, "loaded"))["result"] == []
        assert (await p.request(5, "pipevisor/shutdown", {"graceSeconds": 1}))["result"] is None
        assert await p.wait() == 0


@pytest.mark.anyio
async def test_a_blocking_host_call_fails_when_stdin_closes() -> None:
    async with running(SYNC_PLUGIN) as p:
        await p.send(id=1, method="ask", params={"method": "host.q", "timeout": 30})
        call = await p.read()
        assert call["method"] == "host.q"
        await p.close_stdin()  # the host can no longer answer: do not wait 30 s
        error = (await p.answer_to(1))["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        assert error["data"]["reservedCode"] == ErrorCode.CONNECTION_CLOSED
        assert await p.wait() == 0


def test_stdin_from_dev_null_exits_at_once() -> None:
    """asyncio's pipe transport refused /dev/null and the old kit hung there."""
    with open(__import__("os").devnull, "rb") as null:
        done = subprocess.run([sys.executable, SYNC_PLUGIN], stdin=null, capture_output=True,
                              timeout=DEADLINE, check=False, cwd=ROOT)
    assert done.returncode == 0 and done.stdout == b""


def test_importing_the_kit_loads_no_heavy_module() -> None:
    """What `import pipevisor.kit` adds to a bare interpreter (site may load some itself)."""
    code = ("import sys; before = set(sys.modules); import pipevisor.kit; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=DEADLINE, check=True, cwd=ROOT)
    modules = set(out.stdout.split())
    # The kit reads the protocol's constants from pipevisor.protocol.constants, which
    # imports nothing; the package itself is lazy (PEP 562). Nothing else of it loads.
    light = {"pipevisor.protocol", "pipevisor.protocol.constants"}
    assert "pipevisor.protocol.constants" in modules  # the constants are not copied
    added = {".".join(m.split(".")[:2]) if m.startswith("pipevisor.") else m.split(".")[0]
             for m in modules - light}
    heavy = {"asyncio", "pipevisor.protocol", "pipevisor.supervisor", "orjson", "jsonschema",
             "anyio", "psutil", "click", "re", "enum",
             "concurrent", "dataclasses", "inspect", "logging", "typing"}
    assert added & heavy == set(), added


def test_stdin_from_a_regular_file_serves_async_and_sync_calls(tmp_path: Path) -> None:
    """An event loop cannot watch a regular file (epoll refuses it): the kit must leave
    reading to the stdin thread instead of handing fd 0 over to the loop."""
    calls = [HANDSHAKE,
             {"jsonrpc": "2.0", "id": 1, "method": "sleep", "params": [0]},
             {"jsonrpc": "2.0", "id": 2, "method": "echo", "params": {"text": "f"}},
             {"jsonrpc": "2.0", "id": 3, "method": "steps", "params": {"n": 2}}]
    script = tmp_path / "in.jsonl"
    script.write_bytes(b"".join(json.dumps(c).encode() + b"\n" for c in calls))
    with script.open("rb") as stdin:
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "plugin_kit" /
                                                   "kit_plugin.py")],
                              stdin=stdin, capture_output=True, timeout=DEADLINE, check=False,
                              cwd=ROOT)
    assert done.returncode == 0, done.stderr
    answers = {m["id"]: m.get("result") for m in map(json.loads, done.stdout.splitlines())
               if "id" in m}
    assert answers[1] == "slept" and answers[2] == {"text": "f"} and answers[3] == 2


def test_fast_path_negotiates_with_the_plugins_own_range() -> None:
    ours = VersionRange(Version(1, 0), Version(1, 5))
    plugin = Plugin("p", protocol_versions=ours)
    assert plugin.protocol_versions == ours
    params = {**HANDSHAKE["params"], "protocolVersions": {"min": "1.2", "max": "1.3"}}
    answer = plugin._fast_handshake(_line(params=params))
    assert answer is not None
    assert json.loads(answer)["result"]["protocolVersion"] == "1.3"
    assert plugin.protocol_version == Version(1, 3)
    params["protocolVersions"] = {"min": "1.6", "max": "2.0"}  # no overlap: protocol answers
    assert Plugin("q", protocol_versions=ours)._fast_handshake(_line(params=params)) is None


def _param_variants() -> list[Any]:
    base: dict[str, Any] = dict(HANDSHAKE["params"])
    changes: list[tuple[str, Any]] = [
        ("protocol", "other"), ("protocol", None), ("host", {"name": "h"}),
        ("host", {"name": "h", "version": "1", "pid": 0}),
        ("host", {"name": "h", "version": "1", "pid": True}),
        ("host", {"name": "h", "version": "1", "pid": 7}), ("plugin", {"instance": 1}),
        ("plugin", {"name": "p", "instance": -1}), ("plugin", {"name": "p", "instance": 1.0}),
        ("protocolVersions", "1.0"), ("protocolVersions", {"min": "1.0"}),
        ("protocolVersions", {"min": "1.0", "max": "1.0", "x": 1}),
        ("interfaces", {"m": []}), ("interfaces", {"m": ["1.0", "1.0"]}),
        ("interfaces", {"m": ["1.0", "2.1"]}), ("interfaces", {"m": ["01.0"]}),
        ("hostMethods", []), ("limits", {"maxLineBytes": 0}), ("limits", {"memoryBytes": None}),
        ("limits", {"cpuPercent": 0}), ("limits", {"cpuPercent": 0.5}),
        ("limits", {"callTimeoutSeconds": True}), ("limits", {"maxLineBytes": None}),
        ("capabilities", {"cancel": 1}), ("capabilities", {"log": {"minLevel": "loud"}}),
        ("capabilities", {"log": {"minLevel": "notice"}}), ("capabilities", []),
        ("x-vendor", {"any": "thing"})]
    variants: list[Any] = [base]
    for key, value in changes:
        variant = dict(base)
        if value is None:
            del variant[key]
        else:
            variant[key] = value
        variants.append(variant)
    return variants


@pytest.mark.parametrize("params", _param_variants())
def test_the_fast_path_takes_only_params_the_schema_accepts(params: Any) -> None:
    """SPEC 6.5 [M-6.5a]: the fast path answers without jsonschema, so it may only take
    params the schema surely accepts; anything else goes to the engine's schema check."""
    from pipevisor.kit.plugin import plain_handshake_params
    from pipevisor.protocol.schema_store import first_error

    if plain_handshake_params(params):
        assert first_error("handshake.params", params) is None
