"""Content-Length framing (protocol/content_length.py) through the Peer: split anywhere,
same bound as lines, garbage reported, the stream recovers."""

from __future__ import annotations

import json

import pytest

from pipevisor.protocol import Peer, ProtocolFault, RequestReceived
from pipevisor.protocol.content_length import MAX_HEADER_BYTES, ContentLengthSplitter, frame
from pipevisor.protocol.framing import OversizedLine


def msg(body: dict[str, object], extra: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return b"Content-Length: %d\r\n%s\r\n%s" % (len(data), extra, data)


REQ = {"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"text": "é\n"}}


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_messages_split_anywhere_come_out_whole(step: int) -> None:
    stream = msg(REQ) + msg({**REQ, "id": 2}, b"Content-Type: x\r\n") + msg({**REQ, "id": 3})
    splitter = ContentLengthSplitter(1024)
    out: list[object] = []
    for i in range(0, len(stream), step):
        out += splitter.feed(stream[i:i + step])
    assert [json.loads(b)["id"] for b in out if isinstance(b, bytes)] == [1, 2, 3]
    assert splitter.end_of_input() is None


def test_a_body_over_the_limit_is_skipped_and_reported_without_being_held() -> None:
    big = {**REQ, "params": "x" * 5000}
    splitter = ContentLengthSplitter(1024)
    data = msg(big) + msg(REQ)
    out: list[object] = []
    for i in range(0, len(data), 100):
        out += splitter.feed(data[i:i + 100])
        assert splitter.buffered <= 1024
    assert isinstance(out[0], OversizedLine) and out[0].size > 5000
    assert out[0].head.startswith(b'{"jsonrpc"')
    assert json.loads(out[1]) == REQ  # type: ignore[arg-type]


def test_a_header_without_length_is_reported_and_the_stream_goes_on() -> None:
    peer = Peer(content_length=True)
    events = peer.receive_data(b"Hello: there\r\n\r\n" + msg(REQ))
    assert isinstance(events[0], ProtocolFault)
    assert isinstance(events[1], RequestReceived) and events[1].request.id == 1


def test_an_endless_header_is_bounded() -> None:
    splitter = ContentLengthSplitter(1024)
    out = splitter.feed(b"X" * (MAX_HEADER_BYTES + 10))
    assert isinstance(out[0], OversizedLine) and not out[0].complete
    assert splitter.buffered <= 3
    out = splitter.feed(b"more\r\n\r\n" + msg(REQ))
    assert [json.loads(b)["id"] for b in out if isinstance(b, bytes)] == [1]


def test_a_message_cut_by_eof_is_reported() -> None:
    peer = Peer(content_length=True)
    assert peer.receive_data(msg(REQ)[:-5]) == []
    assert isinstance(peer.receive_eof()[0], ProtocolFault)


def test_the_peer_frames_what_it_sends_and_reads_pretty_bodies() -> None:
    peer = Peer(content_length=True)
    ident, data = peer.send_request("initialize", {"a": 1})
    head, _, body = data.partition(b"\r\n\r\n")
    assert head == b"Content-Length: %d" % len(body) and json.loads(body)["method"] == "initialize"
    assert frame(b"{}\n") == b"Content-Length: 2\r\n\r\n{}"
    pretty = json.dumps({"jsonrpc": "2.0", "id": ident, "result": [1, 2]}, indent=2).encode()
    events = peer.receive_data(b"Content-Length: %d\r\n\r\n" % len(pretty) + pretty)
    assert events[0].response.result == [1, 2]  # type: ignore[attr-defined]
    # automatic replies are framed too
    peer.receive_data(msg({"jsonrpc": "2.0", "method": 5, "id": 9}))
    assert peer.take_output().startswith(b"Content-Length: ")
