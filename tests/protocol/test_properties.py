"""Property tests: framing and codec hold for any input and any chunking."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipevisor.protocol.codec import Fault, decode_line, encode
from pipevisor.protocol.errors import ErrorObject
from pipevisor.protocol.events import Event
from pipevisor.protocol.framing import HEAD_BYTES, LineSplitter, OversizedLine
from pipevisor.protocol.messages import ErrorResponse, Message, Notification, Request, Response
from pipevisor.protocol.peer import Peer

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


# Streams that exercise the interesting bytes: newlines, CR, whitespace,
# JSON punctuation, invalid UTF-8, and long runs that cross small limits.
stream_piece = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\n", b"\r\n", b"\r", b" ", b"{", b"}", b"[", b"]", b'"', b"\xff",
                     b"\xe2\x80\xa8", b'{"jsonrpc":"2.0","method":"m"}',
                     b'{"jsonrpc":"2.0","id":1,"method":"m"}',
                     b'{"jsonrpc":"2.0","id":1,"result":null}']),
    st.integers(1, 300).map(lambda n: b"x" * n),
)
streams = st.lists(stream_piece, max_size=30).map(b"".join)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=20)
limits = st.integers(min_value=1, max_value=120)


def reference_split(data: bytes, limit: int) -> list[bytes | OversizedLine]:
    """What the splitter must produce, computed on the whole input at once."""
    out: list[bytes | OversizedLine] = []
    *lines, tail = data.split(b"\n")
    for raw in lines:
        if len(raw) > limit:
            out.append(OversizedLine(len(raw), raw[:HEAD_BYTES]))
            continue
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line and not line.isspace():
            out.append(line)
    if len(tail) > limit:
        out.append(OversizedLine(len(tail), tail[:HEAD_BYTES], complete=False))
    else:
        line = tail[:-1] if tail.endswith(b"\r") else tail
        if line and not line.isspace():
            out.append(line)
    return out


@FAST
@given(data=streams, cut_at=cuts, limit=limits)
def test_splitter_any_chunking_matches_reference(data: bytes, cut_at: list[int],
                                                 limit: int) -> None:
    splitter = LineSplitter(limit)
    out: list[bytes | OversizedLine] = []
    for chunk in _cut(data, cut_at):
        out.extend(splitter.feed(chunk))
        assert splitter.buffered <= limit
    tail = splitter.end_of_input()
    if tail is not None:
        out.append(tail)
    assert splitter.buffered == 0
    assert out == reference_split(data, limit)


@FAST
@given(data=streams, cut_at=cuts, limit=limits, answer_garbage=st.booleans())
def test_peer_never_raises_nor_buffers_over_limit(data: bytes, cut_at: list[int], limit: int,
                                                 answer_garbage: bool) -> None:
    peer = Peer(max_line_bytes=limit, answer_garbage=answer_garbage)
    for chunk in _cut(data, cut_at):
        peer.receive_data(chunk)
        assert peer.buffered <= limit
        peer.take_output()
    peer.receive_eof()
    assert peer.buffered == 0


@FAST
@given(line=st.binary(max_size=400))
def test_decode_line_never_raises(line: bytes) -> None:
    decoded = decode_line(line)
    for item in decoded if isinstance(decoded, list) else [decoded]:
        if isinstance(item, Fault):
            assert len(item.raw) <= HEAD_BYTES


# ------------------------------------------------------------------ messages

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
params = st.one_of(
    st.none(),
    st.lists(json_values, max_size=4),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
ids = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                st.text(max_size=12))
methods = st.text(min_size=1, max_size=20)
error_objects = st.builds(
    ErrorObject,
    code=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    message=st.text(max_size=30),
    data=json_values,
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Request, id=ids, method=methods, params=params),
    st.builds(Notification, method=methods, params=params),
    st.builds(Response, id=ids, result=json_values),
    st.builds(ErrorResponse, id=ids, error=error_objects),
)


def _same(a: Any, b: Any) -> bool:
    """Equality that also tells 1 from 1.0 from True (JSON keeps them apart)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@FAST
@given(message=messages)
def test_encode_decode_round_trip(message: Message) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = decode_line(line[:-1])
    assert decoded == message
    assert not isinstance(decoded, list | Fault)
    assert _same(decoded.to_json(), message.to_json())


def _events(chunks: list[bytes]) -> tuple[list[Event], bytes]:
    peer = Peer(answer_garbage=True)
    events: list[Event] = []
    for chunk in chunks:
        events += peer.receive_data(chunk)
    events += peer.receive_eof()
    return events, peer.take_output()


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(messages, min_size=1, max_size=5), crlf=st.booleans())
def test_stream_split_at_every_offset_decodes_the_same(batch: list[Message], crlf: bool) -> None:
    lines = [encode(m) for m in batch]
    if crlf:
        lines = [line[:-1] + b"\r\n" for line in lines]
    data = b"".join(lines)
    whole = _events([data])
    assert len(whole[0]) >= 1
    for offset in range(len(data) + 1):
        assert _events([data[:offset], data[offset:]]) == whole
    assert _events([data[i : i + 1] for i in range(len(data))]) == whole
