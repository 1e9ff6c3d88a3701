"""The JSON-RPC 2.0 specification's example exchanges (and vectors derived from
its normative text), replayed against a ``Peer`` acting as a server.

The vectors live in ``jsonrpc_vectors.json`` beside this file. Each one is a
single line sent to the server and the exact answer expected (``null``: no
answer at all). Answers are compared as parsed JSON values; a batch answer is
compared as a multiset matched by id.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipevisor.protocol.errors import STANDARD_MESSAGES, ErrorCode, standard_error
from pipevisor.protocol.events import Event, NotificationReceived, ProtocolFault, RequestReceived
from pipevisor.protocol.messages import Request
from pipevisor.protocol.peer import Peer

VECTORS_FILE = Path(__file__).with_name("jsonrpc_vectors.json")
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text("utf-8"))

BARRIER = b'{"jsonrpc": "2.0", "method": "get_data", "id": "barrier"}\n'


class InvalidParams(Exception):
    pass


def _subtract(params: Any) -> Any:
    if isinstance(params, list) and len(params) == 2:
        a, b = params
    elif isinstance(params, dict) and set(params) == {"minuend", "subtrahend"}:
        a, b = params["minuend"], params["subtrahend"]
    else:
        raise InvalidParams("subtract takes [a, b] or {minuend, subtrahend}")
    if not all(type(x) in (int, float) for x in (a, b)):
        raise InvalidParams("subtract takes numbers")
    return a - b


def _sum(params: Any) -> Any:
    if not isinstance(params, list) or not all(type(x) in (int, float) for x in params):
        raise InvalidParams("sum takes an array of numbers")
    return sum(params)


METHODS: dict[str, Any] = {
    "subtract": _subtract,
    "sum": _sum,
    "get_data": lambda params: ["hello", 5],
    "update": lambda params: None,
    "notify_hello": lambda params: None,
    "notify_sum": lambda params: None,
}


class Server:
    """A tiny dispatcher over a sans-I/O peer: what a plugin's main loop does."""

    def __init__(self, answer_garbage: bool = True) -> None:
        self.peer = Peer(answer_garbage=answer_garbage)
        self.notifications: list[str] = []
        self.faults = 0

    def feed(self, data: bytes) -> bytes:
        """Feed bytes; return everything written back (dispatcher writes + automatic)."""
        written = bytearray()
        events: list[Event] = self.peer.receive_data(data)
        for event in events:
            if isinstance(event, RequestReceived):
                written += self._call(event.request)
            elif isinstance(event, NotificationReceived):
                self.notifications.append(event.notification.method)
            elif isinstance(event, ProtocolFault):
                self.faults += 1
        written += self.peer.take_output()
        return bytes(written)

    def _call(self, request: Request) -> bytes:
        method = METHODS.get(request.method)
        if method is None:
            return self.peer.send_error(request.id, standard_error(ErrorCode.METHOD_NOT_FOUND))
        try:
            result = method(request.params)
        except InvalidParams as exc:
            return self.peer.send_error(
                request.id, standard_error(ErrorCode.INVALID_PARAMS, str(exc))
            )
        return self.peer.send_result(request.id, result)


def _lines(written: bytes) -> list[Any]:
    assert written == b"" or written.endswith(b"\n"), written
    return [orjson.loads(line) for line in written.splitlines()]


def _check_one(actual: Any, expected: dict[str, Any]) -> None:
    assert isinstance(actual, dict), actual
    assert actual.get("jsonrpc") == "2.0"
    assert "id" in actual
    assert actual["id"] == expected["id"]
    assert type(actual["id"]) is type(expected["id"])  # "1" is not 1
    if "result" in expected:
        assert actual == expected
        return
    assert set(actual) == {"jsonrpc", "id", "error"}, actual
    error = actual["error"]
    assert error["code"] == expected["error"]["code"]
    # Detail may travel in "data", but the message is the canonical text.
    assert error["message"] == expected["error"]["message"]
    assert error["message"] == STANDARD_MESSAGES[error["code"]]
    assert set(error) <= {"code", "message", "data"}


def _id_key(entry: Any) -> str:
    return json.dumps(entry.get("id") if isinstance(entry, dict) else None)


def _check_any(actual: Any, expected: Any) -> None:
    if isinstance(expected, list):
        _check_batch(actual, expected)
    else:
        _check_one(actual, expected)


def _match_multiset(actual: list[Any], expected: list[Any]) -> None:
    """Every expected answer matches a distinct actual one, in any order."""
    assert len(actual) == len(expected), (actual, expected)
    remaining = list(actual)
    for want in expected:
        for index, got in enumerate(remaining):
            try:
                _check_any(got, want)
            except AssertionError:
                continue
            del remaining[index]
            break
        else:
            pytest.fail(f"no answer matches {want!r} in {actual!r}")
    assert remaining == []


def _check_batch(actual: Any, expected: list[dict[str, Any]]) -> None:
    assert isinstance(actual, list), f"expected a batch array, got {actual!r}"
    assert Counter(map(_id_key, actual)) == Counter(map(_id_key, expected))
    _match_multiset(actual, expected)


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['n']:02d}-{v['name']}" for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    server = Server()
    written = server.feed(vector["send"].encode("utf-8") + b"\n")
    expected = vector["expect"]
    answers = _lines(written)
    if expected is None:
        assert answers == []
    else:
        assert len(answers) == 1, f"want exactly one answer line, got {answers!r}"
        _check_any(answers[0], expected)
    # Barrier: the next request gets exactly its own answer, so nothing is
    # still queued from the vector (a deferred or duplicated reply would show).
    after = _lines(server.feed(BARRIER))
    assert after == [{"jsonrpc": "2.0", "id": "barrier", "result": ["hello", 5]}]
    assert server.peer.take_output() == b""
    assert server.peer.incoming == frozenset()


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['n']:02d}-{v['name']}" for v in VECTORS])
def test_vector_on_the_host_side(vector: dict[str, Any]) -> None:
    """[M-3.4a] [M-4.2a] The host's peer, configured as engine/connection.py does,
    answers every example as a JSON-RPC 2.0 server must, parse errors included."""
    server = Server(answer_garbage=True)
    answers = _lines(server.feed(vector["send"].encode("utf-8") + b"\n"))
    if vector["expect"] is None:
        assert answers == []
    else:
        assert len(answers) == 1, answers
        _check_any(answers[0], vector["expect"])
    assert _lines(server.feed(BARRIER)) == [
        {"jsonrpc": "2.0", "id": "barrier", "result": ["hello", 5]}]
    assert server.peer.take_output() == b""


def test_vector_file_is_complete() -> None:
    assert [v["n"] for v in VECTORS] == list(range(1, 26))
    assert len({v["send"] for v in VECTORS}) == len(VECTORS)


def test_notifications_reach_the_dispatcher_but_get_no_answer() -> None:
    server = Server()
    by_number = {v["n"]: v for v in VECTORS}
    written = b"".join(
        server.feed(by_number[n]["send"].encode() + b"\n") for n in (5, 6, 15)
    )
    assert written == b""
    assert server.notifications == ["update", "foobar", "notify_sum", "notify_hello"]
    assert server.faults == 0


def test_all_vectors_on_one_connection_crlf() -> None:
    """The same lines, CRLF-terminated, on one connection, answer the same.

    Fed one line per chunk: vectors 7 and 14 both use id "1", and within one
    chunk the second would be an (intentionally dropped) duplicate in flight.
    """
    server = Server()
    written = b"".join(server.feed(v["send"].encode() + b"\r\n") for v in VECTORS)
    answers = _lines(written)
    expected = [v["expect"] for v in VECTORS if v["expect"] is not None]
    # Automatic replies and the dispatcher's are not interleaved in input
    # order; JSON-RPC does not order answers, so compare as a multiset.
    _match_multiset(answers, expected)


def test_invalid_request_detail_is_in_data_not_message() -> None:
    server = Server()
    (answer,) = _lines(server.feed(b'{"jsonrpc": "2.0", "method": 1}\n'))
    assert answer["error"]["message"] == "Invalid Request"
    assert isinstance(answer["error"]["data"], str) and "method" in answer["error"]["data"]


def test_parse_error_only_when_answering_garbage() -> None:
    quiet = Peer()  # host side: a stray print from the plugin gets no answer
    events = quiet.receive_data(b"hello debug\n")
    assert len(events) == 1 and isinstance(events[0], ProtocolFault)
    assert quiet.take_output() == b""
    server = Server()
    (answer,) = _lines(server.feed(b"hello debug\n"))
    assert answer["error"]["code"] == ErrorCode.PARSE_ERROR
    assert answer["id"] is None
