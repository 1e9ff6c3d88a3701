"""The JSON-RPC 2.0 specification's examples (and the vectors derived from its text in
tests/protocol/jsonrpc_vectors.json), sent to a pipevisor.kit plugin over real pipes.

Each vector is one line; the plugin must write exactly the expected answer
(nothing, for notifications) and nothing else. A barrier request after each
vector shows that no answer is missing, late or doubled. [M-3.4a] [M-3.5a]
[M-4.2a] [M-4.3b] [M-4.4a] [M-4.4b] [M-4.4c] [M-4.4d]
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conformance.wire import STANDARD, Checked, conformance
from tests.plugin_kit.pipes import DEADLINE

pytestmark = pytest.mark.anyio

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parents[1] / "protocol" / "jsonrpc_vectors.json").read_text())


def _check_one(actual: Any, expected: dict[str, Any]) -> None:
    assert isinstance(actual, dict), actual
    assert "id" in actual and actual["id"] == expected["id"], (actual, expected)
    assert type(actual["id"]) is type(expected["id"])  # "1" is not 1  [M-4.3b]
    if "result" in expected:
        assert actual == expected
        return
    assert set(actual) == {"jsonrpc", "id", "error"}, actual
    code = actual["error"]["code"]
    assert code == expected["error"]["code"], (actual, expected)
    # The canonical text, optionally followed by detail ("Method not found: foobar").
    assert actual["error"]["message"].startswith(STANDARD[code]), actual


def _check(actual: Any, expected: Any) -> None:
    if not isinstance(expected, list):
        _check_one(actual, expected)
        return
    assert isinstance(actual, list) and len(actual) == len(expected), (actual, expected)
    left = list(actual)
    for want in expected:  # a batch answer in any order, matched by id
        for index, got in enumerate(left):
            try:
                _check_one(got, want)
            except AssertionError:
                continue
            del left[index]
            break
        else:
            pytest.fail(f"no answer matches {want!r} in {actual!r}")


async def _until_barrier(p: Checked, barrier: str) -> list[Any]:
    """Everything the plugin writes up to the barrier's answer (that answer left out)."""
    await p.send(id=barrier, method="get_data")
    seen: list[Any] = []
    while True:
        msg = await p.read()
        if isinstance(msg, dict) and msg.get("id") == barrier:
            assert msg["result"] == ["hello", 5]
            return seen
        if isinstance(msg, dict) and msg.get("method") == "pipevisor/log":
            continue  # a log line is not an answer
        seen.append(msg)


async def _run_vector(p: Checked, vector: dict[str, Any]) -> None:
    await p.send_raw(vector["send"].encode() + b"\n")
    expected = vector["expect"]
    seen = await _until_barrier(p, f"barrier-{vector['n']}-a")
    if expected is not None and not seen:  # a handler's answer may follow the barrier's
        seen = await _until_barrier(p, f"barrier-{vector['n']}-b")
    if expected is None:
        assert seen == []
    else:
        assert len(seen) == 1, seen
        _check(seen[0], expected)
    # Nothing more comes: no duplicate, no late extra answer.
    assert await _until_barrier(p, f"barrier-{vector['n']}-c") == []


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['n']:02d}-{v['name']}" for v in VECTORS])
async def test_each_example_on_a_fresh_plugin(vector: dict[str, Any]) -> None:
    async with conformance() as p:
        await _run_vector(p, vector)
        await p.close_stdin()
        assert await p.wait() == 0


async def test_all_examples_on_one_connection_and_notifications_reach_handlers() -> None:
    """The 25 in a row on one plugin; the notifications among them reach their
    handlers with their params, and none is answered."""
    async with conformance() as p:
        for vector in VECTORS:
            await _run_vector(p, vector)
        want = sorted(map(json.dumps, [["update", 1, 2, 3, 4, 5], ["notify_hello", 7],
                                       ["notify_hello", 7], ["notify_sum", 1, 2, 4]]))
        with anyio.fail_after(DEADLINE):  # handlers run in workers, beside the call reading
            for attempt in itertools.count():
                heard = (await p.request(f"heard-{attempt}", "heard"))["result"]
                if sorted(map(json.dumps, heard)) == want:
                    break
                assert len(heard) < len(want), heard
                await anyio.sleep(0.01)
        await p.close_stdin()
        assert await p.wait() == 0
