"""The connection state machine: ids, matching, cancel, fail_all, batches."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import orjson
import pytest

from pipevisor.protocol.codec import FaultKind
from pipevisor.protocol.errors import (
    EncodeError,
    ErrorCode,
    ErrorObject,
    LocalProtocolError,
    local_error,
    standard_error,
)
from pipevisor.protocol.events import (
    Event,
    NotificationReceived,
    ProtocolFault,
    RequestReceived,
    ResponseReceived,
)
from pipevisor.protocol.handshake import CANCEL
from pipevisor.protocol.messages import ErrorResponse, Notification, Request, RequestId, Response
from pipevisor.protocol.peer import Peer


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def result(ident: RequestId, value: Any) -> bytes:
    return line({"jsonrpc": "2.0", "id": ident, "result": value})


def request(ident: RequestId, method: str = "m", params: Any = None) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        obj["params"] = params
    return line(obj)


def only_fault(events: list[Event]) -> ProtocolFault:
    assert len(events) == 1, events
    (event,) = events
    assert isinstance(event, ProtocolFault), event
    return event


# ------------------------------------------------------------------ requests


def test_ids_are_assigned_in_sequence_and_encoded() -> None:
    peer = Peer()
    first, data1 = peer.send_request("a", [1])
    second, data2 = peer.send_request("b", {"k": "v"})
    third, data3 = peer.send_request("c")
    assert (first, second, third) == (1, 2, 3)
    assert orjson.loads(data1) == {"jsonrpc": "2.0", "id": 1, "method": "a", "params": [1]}
    assert orjson.loads(data2) == {"jsonrpc": "2.0", "id": 2, "method": "b",
                                   "params": {"k": "v"}}
    assert orjson.loads(data3) == {"jsonrpc": "2.0", "id": 3, "method": "c"}
    assert all(d.endswith(b"\n") and d.count(b"\n") == 1 for d in (data1, data2, data3))
    assert peer.outgoing == {1: "a", 2: "b", 3: "c"}
    assert peer.stats.messages_out == 3


def test_injected_id_factory() -> None:
    peer = Peer(id_factory=iter(["x", "y"]).__next__)
    assert peer.send_request("m")[0] == "x"
    assert peer.send_request("m")[0] == "y"


def test_id_factory_reusing_an_id_in_flight_is_refused() -> None:
    peer = Peer(id_factory=itertools.repeat(7).__next__)
    peer.send_request("m")
    with pytest.raises(LocalProtocolError):
        peer.send_request("m")
    assert peer.outgoing == {7: "m"}


def test_response_matched_to_its_request() -> None:
    peer = Peer()
    ident, _ = peer.send_request("compute")
    events = peer.receive_data(result(ident, 42))
    assert events == [ResponseReceived(Response(ident, 42), "compute")]
    assert peer.outgoing == {}
    assert peer.stats.messages_in == 1


def test_error_response_matched_to_its_request() -> None:
    peer = Peer()
    ident, _ = peer.send_request("compute")
    data = line({"jsonrpc": "2.0", "id": ident,
                 "error": {"code": -32601, "message": "Method not found", "data": {"x": 1}}})
    events = peer.receive_data(data)
    assert events == [ResponseReceived(
        ErrorResponse(ident, ErrorObject(-32601, "Method not found", {"x": 1})), "compute")]


def test_out_of_order_responses() -> None:
    peer = Peer()
    sent = {peer.send_request(f"m{i}")[0]: f"m{i}" for i in range(5)}
    order = [3, 1, 5, 2, 4]
    events = peer.receive_data(b"".join(result(i, i * 10) for i in order))
    assert events == [ResponseReceived(Response(i, i * 10), sent[i]) for i in order]
    assert peer.outgoing == {}


def test_unexpected_response_is_a_fault() -> None:
    peer = Peer()
    peer.send_request("m")
    fault = only_fault(peer.receive_data(result(99, "x"))).fault
    assert fault.kind is FaultKind.UNEXPECTED_RESPONSE
    assert fault.id == 99
    assert b"99" in fault.raw
    assert peer.outgoing == {1: "m"}
    assert peer.stats.faults == 1


def test_second_response_to_the_same_request_is_unexpected() -> None:
    peer = Peer()
    ident, _ = peer.send_request("m")
    assert len(peer.receive_data(result(ident, 1))) == 1
    assert only_fault(peer.receive_data(result(ident, 2))).fault.kind is (
        FaultKind.UNEXPECTED_RESPONSE)


def test_duplicate_incoming_id_is_a_fault_and_dropped() -> None:
    peer = Peer()
    events = peer.receive_data(request(5, "a"))
    assert events == [RequestReceived(Request(5, "a"))]
    fault = only_fault(peer.receive_data(request(5, "b"))).fault
    assert fault.kind is FaultKind.DUPLICATE_REQUEST_ID
    assert fault.id == 5
    assert peer.incoming == frozenset({5})
    # Once answered, the id may be used again.
    assert orjson.loads(peer.send_result(5, "ok")) == {"jsonrpc": "2.0", "id": 5, "result": "ok"}
    assert peer.receive_data(request(5, "c")) == [RequestReceived(Request(5, "c"))]


def test_duplicate_id_in_one_chunk() -> None:
    peer = Peer()
    events = peer.receive_data(request("d", "a") + request("d", "b"))
    assert events[0] == RequestReceived(Request("d", "a"))
    assert isinstance(events[1], ProtocolFault)
    assert events[1].fault.kind is FaultKind.DUPLICATE_REQUEST_ID


@pytest.mark.parametrize(
    "reply",
    [
        {"jsonrpc": "2.0", "id": 1, "error": "boom"},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}},
        {"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "m"}},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "1.0", "id": 1, "result": 1},
        {"id": 1, "result": 1},
    ],
)
def test_malformed_response_settles_the_pending_request(reply: dict[str, Any]) -> None:
    peer = Peer()
    ident, _ = peer.send_request("m")
    events = peer.receive_data(line(reply))
    assert len(events) == 2
    fault, settled = events
    assert isinstance(fault, ProtocolFault)
    assert fault.fault.kind is FaultKind.INVALID_MESSAGE
    assert isinstance(settled, ResponseReceived)
    assert settled.method == "m"
    assert isinstance(settled.response, ErrorResponse)
    assert settled.response.id == ident
    assert settled.response.error.code == ErrorCode.INVALID_RESPONSE
    assert settled.response.error.is_local
    assert settled.local  # made up by this side, not sent by the peer
    assert peer.outgoing == {}
    # A malformed response must not draw an "Invalid Request" reply.
    assert peer.take_output() == b""


def test_malformed_response_to_no_pending_request_settles_nothing() -> None:
    peer = Peer()
    peer.send_request("m")
    fault = only_fault(peer.receive_data(line({"jsonrpc": "2.0", "id": 2, "error": 3})))
    assert fault.fault.kind is FaultKind.INVALID_MESSAGE
    assert peer.outgoing == {1: "m"}


# -------------------------------------------------------------------- cancel


def test_cancel_sends_notification_and_drops_late_response() -> None:
    peer = Peer()
    ident, _ = peer.send_request("slow")
    data = peer.cancel(ident)
    assert orjson.loads(data) == {"jsonrpc": "2.0", "method": CANCEL, "params": {"id": ident}}
    assert data.endswith(b"\n")
    assert peer.outgoing == {}
    assert peer.receive_data(result(ident, "late")) == []
    assert peer.stats.late_responses == 1
    assert peer.stats.faults == 0
    # Only once: a second answer to the same id is a fault again.
    assert only_fault(peer.receive_data(result(ident, "again"))).fault.kind is (
        FaultKind.UNEXPECTED_RESPONSE)


def test_cancel_without_notify_and_of_unknown_id() -> None:
    peer = Peer()
    ident, _ = peer.send_request("slow")
    assert peer.cancel(ident, notify=False) == b""
    assert peer.cancel(ident) == b""  # no longer in flight
    assert peer.cancel("never-sent") == b""
    assert peer.receive_data(result(ident, None)) == []
    assert peer.stats.late_responses == 1
    assert only_fault(peer.receive_data(result("never-sent", None))).fault.kind is (
        FaultKind.UNEXPECTED_RESPONSE)


def test_cancelled_ids_are_remembered_only_up_to_the_bound() -> None:
    peer = Peer(remember_cancelled=2)
    ids = [peer.send_request("m")[0] for _ in range(3)]
    for ident in ids:
        peer.cancel(ident, notify=False)
    assert only_fault(peer.receive_data(result(ids[0], 0))).fault.kind is (
        FaultKind.UNEXPECTED_RESPONSE)
    assert peer.receive_data(result(ids[1], 0) + result(ids[2], 0)) == []
    assert peer.stats.late_responses == 2


# ------------------------------------------------------------------ fail_all


def test_fail_all_settles_every_request_exactly_once() -> None:
    peer = Peer()
    sent = {peer.send_request(f"m{i}")[0]: f"m{i}" for i in range(4)}
    peer.receive_data(result(2, "done"))  # one already answered
    peer.receive_data(request("in", "x"))  # one owed by us
    error = local_error(ErrorCode.CONNECTION_CLOSED, "plugin exited")
    failed = peer.fail_all(error)
    assert Counter(f.response.id for f in failed) == Counter({1: 1, 3: 1, 4: 1})
    for settled in failed:
        assert settled.response == ErrorResponse(settled.response.id, error)
        assert settled.method == sent[settled.response.id]
        assert settled.local
    assert peer.outgoing == {}
    assert peer.incoming == frozenset()
    assert peer.fail_all(error) == []
    # A late answer after fail_all does not settle anything a second time.
    events = peer.receive_data(result(1, "late"))
    assert not any(isinstance(e, ResponseReceived) for e in events)
    with pytest.raises(LocalProtocolError):
        peer.send_result("in", None)


# -------------------------------------------------------------------- answer


def test_answering_an_unknown_id_raises() -> None:
    peer = Peer()
    with pytest.raises(LocalProtocolError):
        peer.send_result(1, None)
    with pytest.raises(LocalProtocolError):
        peer.send_error("x", standard_error(ErrorCode.INTERNAL_ERROR))
    peer.receive_data(request(1))
    peer.send_result(1, None)
    with pytest.raises(LocalProtocolError):
        peer.send_result(1, None)  # answered twice


def test_unencodable_result_raises_and_keeps_the_request_owed() -> None:
    peer = Peer()
    peer.receive_data(request(1))
    with pytest.raises(LocalProtocolError):
        peer.send_result(1, {1: object()})
    assert peer.incoming == frozenset({1})
    assert orjson.loads(peer.send_result(1, "ok"))["result"] == "ok"


def test_null_id_request_can_be_answered() -> None:
    peer = Peer()
    assert peer.receive_data(request(None)) == [RequestReceived(Request(None, "m"))]
    assert orjson.loads(peer.send_result(None, 1)) == {"jsonrpc": "2.0", "id": None, "result": 1}


def test_notifications_in_and_out() -> None:
    peer = Peer()
    out = peer.send_notification("note", {"a": 1})
    assert orjson.loads(out) == {"jsonrpc": "2.0", "method": "note", "params": {"a": 1}}
    events = peer.receive_data(line({"jsonrpc": "2.0", "method": "hi", "params": [1]}))
    assert events == [NotificationReceived(Notification("hi", [1]))]
    assert peer.incoming == frozenset()


# ------------------------------------------------------------- bidirectional


class Side:
    """One end of an in-memory connection: answers ``double`` and ``ask_back``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peer = Peer(id_factory=itertools.count(1).__next__)
        self.other: Side | None = None
        self.results: dict[RequestId, Any] = {}
        self.pending_ask: dict[RequestId, RequestId] = {}  # our call -> their request

    def write(self, data: bytes) -> None:
        assert self.other is not None
        # Deliver in two chunks cut mid-line, as a pipe may.
        half = len(data) // 2
        for chunk in (data[:half], data[half:]):
            self.other.handle(self.other.peer.receive_data(chunk))

    def call(self, method: str, params: Any) -> RequestId:
        ident, data = self.peer.send_request(method, params)
        self.write(data)
        return ident

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, RequestReceived):
                req = event.request
                if req.method == "double":
                    assert isinstance(req.params, list)
                    self.write(self.peer.send_result(req.id, req.params[0] * 2))
                elif req.method == "ask_back":
                    # Answer only once the other side has answered our own call.
                    assert isinstance(req.params, list)
                    mine = self.call("double", req.params)
                    if mine in self.results:
                        self.write(self.peer.send_result(req.id, self.results.pop(mine) + 1))
                    else:
                        self.pending_ask[mine] = req.id
            elif isinstance(event, ResponseReceived):
                assert isinstance(event.response, Response)
                ident = event.response.id
                if ident in self.pending_ask:
                    owed = self.pending_ask.pop(ident)
                    self.write(self.peer.send_result(owed, event.response.result + 1))
                else:
                    self.results[ident] = event.response.result
            else:
                pytest.fail(f"{self.name} got {event!r}")


def test_bidirectional_calls_between_two_peers() -> None:
    host, plugin = Side("host"), Side("plugin")
    host.other, plugin.other = plugin, host
    a = host.call("double", [21])
    b = plugin.call("double", [5])  # both sides use id 1: separate tables
    assert a == b == 1
    assert host.results == {1: 42}
    assert plugin.results == {1: 10}
    # A call whose handler calls back before answering (nested, re-entrant).
    c = host.call("ask_back", [7])
    assert host.results[c] == 15
    for side in (host, plugin):
        assert side.peer.outgoing == {}
        assert side.peer.incoming == frozenset()
        assert side.peer.stats.faults == 0
        assert side.peer.take_output() == b""


# ----------------------------------------------------------------------- EOF


def test_eof_with_a_complete_unterminated_message_delivers_it() -> None:
    peer = Peer()
    assert peer.receive_data(request(1)[:-1]) == []
    assert peer.receive_eof() == [RequestReceived(Request(1, "m"))]


def test_eof_with_a_truncated_line() -> None:
    peer = Peer()
    ident, _ = peer.send_request("m")
    data = result(ident, list(range(50)))
    assert peer.receive_data(data[:30]) == []
    fault = only_fault(peer.receive_eof()).fault
    assert fault.kind is FaultKind.TRUNCATED_MESSAGE
    assert fault.raw == data[:30]
    assert peer.buffered == 0
    assert peer.receive_eof() == []
    # The request is still pending: settling it is the owner's job (fail_all).
    assert list(peer.outgoing) == [ident]


def test_eof_with_nothing_buffered() -> None:
    peer = Peer()
    peer.receive_data(request(1))
    assert peer.receive_eof() == []


# -------------------------------------------------------------------- batches


def test_batch_answered_as_one_array_after_all_requests_in_any_order() -> None:
    peer = Peer(answer_garbage=True)  # server role: the bogus item is answered too
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "a"},
        {"jsonrpc": "2.0", "method": "note"},
        {"jsonrpc": "2.0", "id": 2, "method": "b"},
        {"bogus": True},
        {"jsonrpc": "2.0", "id": 3, "method": "c"},
    ]
    events = peer.receive_data(line(batch))
    assert [type(e) for e in events] == [RequestReceived, NotificationReceived, RequestReceived,
                                         ProtocolFault, RequestReceived]
    assert peer.take_output() == b""
    assert peer.send_result(3, "c") == b""
    assert peer.send_error(1, standard_error(ErrorCode.INTERNAL_ERROR)) == b""
    assert peer.take_output() == b""
    data = peer.send_result(2, "b")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    answer = orjson.loads(data)
    assert isinstance(answer, list)
    by_id = {json_id(entry): entry for entry in answer}
    assert len(answer) == 4
    assert by_id["1"]["error"]["code"] == -32603
    assert by_id["2"]["result"] == "b"
    assert by_id["3"]["result"] == "c"
    assert by_id["null"]["error"]["code"] == -32600
    assert peer.take_output() == b""
    assert peer.incoming == frozenset()


def json_id(entry: dict[str, Any]) -> str:
    return orjson.dumps(entry["id"]).decode()


def test_two_batches_answered_independently() -> None:
    peer = Peer()
    peer.receive_data(line([{"jsonrpc": "2.0", "id": 1, "method": "a"},
                            {"jsonrpc": "2.0", "id": 2, "method": "a"}]))
    peer.receive_data(line([{"jsonrpc": "2.0", "id": 3, "method": "a"}]))
    assert orjson.loads(peer.send_result(3, 3)) == [{"jsonrpc": "2.0", "id": 3, "result": 3}]
    assert peer.send_result(1, 1) == b""
    assert len(orjson.loads(peer.send_result(2, 2))) == 2


def test_notifications_only_batch_gets_nothing() -> None:
    peer = Peer(answer_garbage=True)
    events = peer.receive_data(line([{"jsonrpc": "2.0", "method": "a"},
                                     {"jsonrpc": "2.0", "method": "b", "params": [1]}]))
    assert events == [NotificationReceived(Notification("a")),
                      NotificationReceived(Notification("b", [1]))]
    assert peer.take_output() == b""


def test_batch_of_responses_settles_requests_and_writes_nothing() -> None:
    peer = Peer()
    a, _ = peer.send_request("a")
    b, _ = peer.send_request("b")
    events = peer.receive_data(line([{"jsonrpc": "2.0", "id": b, "result": "B"},
                                     {"jsonrpc": "2.0", "id": a, "result": "A"}]))
    assert events == [ResponseReceived(Response(b, "B"), "b"),
                      ResponseReceived(Response(a, "A"), "a")]
    assert peer.take_output() == b""


def test_host_answers_every_invalid_request_as_json_rpc_says() -> None:
    """[M-4.2a] Both ends answer an invalid request -32600, id null when none can be read."""
    peer = Peer()  # host side: no answer_garbage
    peer.receive_data(line({"jsonrpc": "2.0", "method": 5, "id": "q"}))
    answer = orjson.loads(peer.take_output())
    assert answer["id"] == "q"  # a readable id is echoed
    assert answer["error"]["code"] == -32600
    for invalid in (b"42\n", b'{"debug": 1}\n', b'{"jsonrpc": "2.0", "method": 5}\n', b"[]\n",
                    b'{"jsonrpc": "2.0", "id": [1], "method": "m"}\n'):
        events = peer.receive_data(invalid)
        assert events and all(isinstance(e, ProtocolFault) for e in events)
        assert orjson.loads(peer.take_output()) == {
            "jsonrpc": "2.0", "id": None,
            "error": {"code": -32600, "message": "Invalid Request",
                      "data": events[0].fault.detail}}, invalid
    peer.receive_data(b"[1]\n")
    [element] = orjson.loads(peer.take_output())
    assert element["id"] is None and element["error"]["code"] == -32600
    # Not JSON at all is still only reported on the host side (SPEC 3.5).
    assert peer.receive_data(b"DEBUG hello\n")
    assert peer.take_output() == b""


def test_a_bare_id_is_an_invalid_request_unless_it_answers_ours() -> None:
    """[M-4.2b] {"jsonrpc": "2.0", "id": X}: -32600 echoing X, unless we wait for X."""
    for side in (Peer(), Peer(answer_garbage=True)):
        side.receive_data(line({"jsonrpc": "2.0", "id": "x"}))
        assert orjson.loads(side.take_output()) == {
            "jsonrpc": "2.0", "id": "x",
            "error": {"code": -32600, "message": "Invalid Request",
                      "data": "neither a request (no method) nor a response"}}
        assert side.incoming == frozenset()


def test_batch_on_host_side_answers_its_invalid_elements() -> None:
    peer = Peer()
    peer.receive_data(line([{"jsonrpc": "2.0", "id": 1, "method": "a"}, 7]))
    answer = orjson.loads(peer.send_result(1, "r"))
    assert sorted(answer, key=lambda a: str(a["id"])) == [
        {"jsonrpc": "2.0", "id": 1, "result": "r"},
        {"jsonrpc": "2.0", "id": None,
         "error": {"code": -32600, "message": "Invalid Request", "data": "not a JSON object"}}]


@pytest.mark.parametrize("garbage", [False, True])
def test_automatic_replies_to_a_flood_are_bounded(garbage: bool) -> None:
    """A peer flooding us with invalid messages gets at most max_auto_replies answers per
    take_output; the rest are counted, not queued."""
    peer = Peer(max_auto_replies=10, answer_garbage=garbage)
    flood = b"[]\n" * 50 + b"7\n" * 50 + b"[1,2,3]\n" * 10 + b"nope\n" * 10
    events = peer.receive_data(flood)
    assert len(events) == 50 + 50 + 30 + 10  # every one still reported as a fault
    out = peer.take_output()
    assert out.count(b"\n") == 10
    assert peer.stats.unanswered == 130 - 10 + (10 if garbage else 0)
    # The bound is per take_output: the next read is answered again.
    peer.receive_data(b"[]\n")
    assert orjson.loads(peer.take_output())["error"]["code"] == -32600
    # Answers a dispatcher writes itself are never held back.
    peer.receive_data(b"7\n" * 20 + line({"jsonrpc": "2.0", "id": 1, "method": "m"}))
    assert peer.send_result(1, None) == b'{"jsonrpc":"2.0","id":1,"result":null}\n'


@pytest.mark.parametrize("params", [5, "text", True, 1.5, b"bytes"])
def test_scalar_params_are_refused_before_anything_is_sent(params: Any) -> None:
    """SPEC 4.1 [M-4.1b]: params are an object or an array; a receiver would answer a
    scalar with -32600, so the sender refuses it with a reason and sends nothing."""
    peer = Peer()
    with pytest.raises(EncodeError, match="must be an object or an array"):
        peer.send_request("m", params)
    with pytest.raises(EncodeError, match="must be an object or an array"):
        peer.send_notification("m", params)
    assert not peer.outgoing and peer.stats.messages_out == 0


def test_structured_params_of_any_kind_orjson_writes_pass() -> None:
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: int

    peer = Peer()
    for params, wire in ({"a": 1}, b'{"a":1}'), ([1], b"[1]"), ((1, 2), b"[1,2]"), (
            Point(3), b'{"x":3}'):
        _, data = peer.send_request("m", params)
        assert data.endswith(b'"params":' + wire + b"}\n")
    _, data = peer.send_request("m")
    assert b"params" not in data
