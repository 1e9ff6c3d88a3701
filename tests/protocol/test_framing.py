"""Newline framing and line decoding: what survives a hostile or sloppy stdout."""

from __future__ import annotations

import orjson
import pytest

from pipevisor.protocol.codec import Fault, FaultKind, decode_line, encode
from pipevisor.protocol.events import NotificationReceived, ProtocolFault, RequestReceived
from pipevisor.protocol.framing import HEAD_BYTES, LineSplitter, OversizedLine
from pipevisor.protocol.messages import Notification, Request
from pipevisor.protocol.peer import Peer

REQ = b'{"jsonrpc":"2.0","id":1,"method":"m"}'


def feed_all(splitter: LineSplitter, chunks: list[bytes]) -> list[bytes | OversizedLine]:
    out: list[bytes | OversizedLine] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
        assert splitter.buffered <= splitter.max_line_bytes
    return out


# --------------------------------------------------------------- line splitting


def test_lf_and_crlf() -> None:
    s = LineSplitter()
    assert s.feed(b"a\nb\r\nc\n") == [b"a", b"b", b"c"]
    assert s.buffered == 0


def test_only_the_last_cr_is_stripped() -> None:
    s = LineSplitter()
    assert s.feed(b"a\r\r\nb\rc\n") == [b"a\r", b"b\rc"]


def test_blank_and_whitespace_lines_are_skipped() -> None:
    s = LineSplitter()
    assert s.feed(b"\n\r\n   \n\t \r\nx\n\n") == [b"x"]


def test_many_lines_in_one_chunk() -> None:
    lines = [b'{"n":%d}' % i for i in range(500)]
    s = LineSplitter()
    assert s.feed(b"\n".join(lines) + b"\n") == lines


def test_one_line_over_many_chunks() -> None:
    line = b'{"jsonrpc":"2.0","method":"m","params":["' + b"x" * 1000 + b'"]}'
    s = LineSplitter()
    out: list[bytes | OversizedLine] = []
    for i in range(len(line)):
        out += s.feed(line[i : i + 1])
        assert out == []
        assert s.buffered == i + 1
    assert s.feed(b"\r") == []
    assert s.feed(b"\n") == [line]
    assert s.buffered == 0


def test_end_of_input_flushes_unterminated_line() -> None:
    s = LineSplitter()
    assert s.feed(b"a\nbc") == [b"a"]
    assert s.end_of_input() == b"bc"
    assert s.end_of_input() is None
    s.feed(b"  \r")
    assert s.end_of_input() is None


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineSplitter(0)


# --------------------------------------------------------- U+2028 / U+2029


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x1c", "\x0b", "\x0c"])
def test_unicode_line_separators_do_not_cut_a_message(char: str) -> None:
    text = f"before{char}after"
    data = orjson.dumps({"jsonrpc": "2.0", "method": "log", "params": {"text": text}}) + b"\n"
    if char in "\u2028\u2029\u0085":
        # orjson leaves these raw: the bytes really contain the separator,
        # and str.splitlines() would cut the message there.
        assert char.encode("utf-8") in data
        assert len(data.decode("utf-8").splitlines()) == 2
    else:
        assert char.encode("utf-8") not in data  # control characters are escaped
    peer = Peer()
    events = peer.receive_data(data[:7]) + peer.receive_data(data[7:])
    assert events == [NotificationReceived(Notification("log", {"text": text}))]


# ------------------------------------------------------------- oversized lines


def test_line_exactly_at_the_limit_passes_one_over_does_not() -> None:
    s = LineSplitter(10)
    assert s.feed(b"0123456789\n") == [b"0123456789"]
    assert s.feed(b"0123456789A\nok\n") == [OversizedLine(11, b"0123456789A"), b"ok"]


def test_line_at_the_limit_across_chunks() -> None:
    s = LineSplitter(10)
    assert feed_all(s, [b"01234", b"56789", b"\n"]) == [b"0123456789"]
    assert feed_all(s, [b"01234", b"56789", b"A\n"]) == [OversizedLine(11, b"0123456789A")]


def test_oversized_line_in_one_chunk_reported_once_and_resyncs() -> None:
    big = b"[" + b"1," * 5000 + b"1]"
    s = LineSplitter(1000)
    out = s.feed(REQ + b"\n" + big + b"\n" + REQ + b"\n")
    assert out == [REQ, OversizedLine(len(big), big[:HEAD_BYTES]), REQ]
    assert s.buffered == 0


def test_oversized_line_spanning_many_chunks() -> None:
    limit = 1000
    big = bytes(range(48, 58)) * 1000  # 10_000 bytes, no newline
    s = LineSplitter(limit)
    chunks = [REQ + b"\n" + big[:7]] + [big[i : i + 333] for i in range(7, len(big), 333)]
    chunks.append(b"\r\n" + REQ + b"\n")
    out = feed_all(s, chunks)
    # Reported exactly once, with the full size (the \r counts, the \n not).
    assert out == [REQ, OversizedLine(len(big) + 1, big[:HEAD_BYTES]), REQ]
    assert s.buffered == 0


def test_oversized_line_head_does_not_depend_on_chunking() -> None:
    """A short unfinished line followed by one huge chunk: the head is still
    the first HEAD_BYTES bytes of the line, not just what was buffered."""
    big = b"x" * 5 + b"y" * 3000
    s = LineSplitter(1000)
    assert s.feed(big[:5]) == []
    assert s.feed(big[5:] + b"\n") == [OversizedLine(len(big), big[:HEAD_BYTES])]


def test_oversized_line_head_with_limit_below_head_size() -> None:
    big = bytes(b for b in range(256) if b != 10) * 2
    s = LineSplitter(50)
    out = feed_all(s, [big[:60], big[60:130], big[130:], b"\n"])
    assert out == [OversizedLine(len(big), big[:HEAD_BYTES])]


def test_oversized_line_that_never_ends() -> None:
    s = LineSplitter(100)
    out = feed_all(s, [REQ + b"\n"] + [b"z" * 64] * 50)
    assert out == [REQ]
    assert s.buffered == 0  # discarding, holding nothing
    tail = s.end_of_input()
    assert tail == OversizedLine(64 * 50, b"z" * HEAD_BYTES, complete=False)
    assert s.end_of_input() is None


def test_buffer_never_above_limit() -> None:
    s = LineSplitter(64)
    for size in (1, 7, 63, 64, 65, 200):
        for _ in range(5):
            s.feed(b"q" * size)
            assert s.buffered <= 64
        s.feed(b"\n")
        assert s.buffered == 0


def test_peer_reports_oversized_line_once_and_keeps_going() -> None:
    peer = Peer(max_line_bytes=100)
    big = b'{"jsonrpc":"2.0","method":"m","params":["' + b"a" * 500 + b'"]}'
    events = []
    for i in range(0, len(big), 50):
        events += peer.receive_data(big[i : i + 50])
        assert peer.buffered <= 100
    events += peer.receive_data(b"\n" + REQ + b"\n")
    assert len(events) == 2
    fault, request = events
    assert isinstance(fault, ProtocolFault)
    assert fault.fault.kind is FaultKind.OVERSIZED_LINE
    assert fault.fault.raw == big[:HEAD_BYTES]
    assert str(len(big)) in fault.fault.detail
    assert request == RequestReceived(Request(1, "m"))
    assert peer.stats.faults == 1
    assert peer.take_output() == b""  # host side: no answer to garbage


def test_peer_answering_garbage_replies_parse_error_to_oversized_line() -> None:
    peer = Peer(max_line_bytes=10, answer_garbage=True)
    peer.receive_data(b"x" * 50 + b"\n")
    reply = orjson.loads(peer.take_output())
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700
    assert reply["error"]["message"] == "Parse error"


def test_peer_oversized_line_until_eof() -> None:
    peer = Peer(max_line_bytes=10)
    assert peer.receive_data(b"y" * 300) == []
    (event,) = peer.receive_eof()
    assert isinstance(event, ProtocolFault)
    assert event.fault.kind is FaultKind.OVERSIZED_LINE
    assert event.fault.raw == b"y" * HEAD_BYTES
    assert "300" in event.fault.detail


# ----------------------------------------------------------------- decoding


def _fault(line: bytes) -> Fault:
    decoded = decode_line(line)
    assert isinstance(decoded, Fault), decoded
    assert len(decoded.raw) <= HEAD_BYTES
    assert decoded.raw == line[:HEAD_BYTES]
    return decoded


def test_invalid_utf8() -> None:
    fault = _fault(b'{"jsonrpc":"2.0","method":"\xff\xfe"}')
    assert fault.kind is FaultKind.INVALID_UTF8
    assert fault.is_request is False


def test_invalid_utf8_truncated_to_head() -> None:
    line = b'"' + b"\xc3" * 1000 + b'"'
    fault = _fault(line)
    assert fault.kind is FaultKind.INVALID_UTF8
    assert len(fault.raw) == HEAD_BYTES


def test_stray_non_json_line() -> None:
    fault = _fault(b"hello debug")
    assert fault.kind is FaultKind.INVALID_JSON


def test_stray_long_non_json_line_truncated() -> None:
    line = b"DEBUG: " + b"spam " * 400
    fault = _fault(line)
    assert fault.kind is FaultKind.INVALID_JSON
    assert len(fault.raw) == HEAD_BYTES


@pytest.mark.parametrize(
    "line",
    [
        b'{"hello": "world"}',
        b'{"jsonrpc": "2.0"}',
        b'{"jsonrpc": "2.0", "id": 1}',
        b'{"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "x"}}',
        b'{"jsonrpc": "2.0", "id": 1, "error": "bad"}',
        b'{"jsonrpc": "2.0", "id": 1, "error": {"code": "1", "message": "x"}}',
        b'{"jsonrpc": "2.0", "method": "m", "params": null}',
        b'{"jsonrpc": "2.0", "method": "m", "id": {"a": 1}}',
        b'{"jsonrpc": "2.0", "method": "m", "id": true}',
        b'{"jsonrpc": 2.0, "method": "m"}',
        b"42",
        b"null",
        b"[]",
        b'{"k": "' + b"v" * 1000 + b'"}',
    ],
)
def test_json_that_is_not_jsonrpc(line: bytes) -> None:
    fault = _fault(line)
    assert fault.kind is FaultKind.INVALID_MESSAGE


def test_fault_kinds_are_distinct() -> None:
    kinds = {
        _fault(b"\xff").kind,
        _fault(b"{nope").kind,
        _fault(b'{"a": 1}').kind,
    }
    assert kinds == {FaultKind.INVALID_UTF8, FaultKind.INVALID_JSON, FaultKind.INVALID_MESSAGE}
    assert len(set(FaultKind)) == len(list(FaultKind))


GARBAGE = [
    b"",
    b"\x00",
    b"\xff" * 300,
    b"{" * 10000,
    b"[" * 10000 + b"]" * 10000,
    b'"\\ud800"',
    b"1e999999",
    b"123456789012345678901234567890",
    b"NaN",
    b"[1,2,]",
    b'{"a":1}{"b":2}',
    b"\xef\xbb\xbf{}",
    bytes(range(256)),
]


@pytest.mark.parametrize("line", GARBAGE)
def test_decoder_never_raises(line: bytes) -> None:
    decoded = decode_line(line)
    items = decoded if isinstance(decoded, list) else [decoded]
    for item in items:
        if isinstance(item, Fault):
            assert len(item.raw) <= HEAD_BYTES


@pytest.mark.parametrize("line", GARBAGE)
def test_peer_never_raises_on_garbage(line: bytes) -> None:
    for peer in (Peer(), Peer(answer_garbage=True), Peer(max_line_bytes=len(REQ))):
        events = peer.receive_data(line + b"\n") + peer.receive_eof()
        assert all(isinstance(e, ProtocolFault) for e in events)
        assert peer.buffered == 0
        # The stream resyncs: a good request right after is delivered.
        assert peer.receive_data(REQ + b"\n") == [RequestReceived(Request(1, "m"))]


def test_invalid_json_inside_a_batch_line() -> None:
    assert _fault(b'[{"jsonrpc":"2.0","method":"m"}, {').kind is FaultKind.INVALID_JSON


def test_batch_decodes_item_by_item() -> None:
    decoded = decode_line(b'[{"jsonrpc":"2.0","method":"m"}, 5]')
    assert isinstance(decoded, list)
    first, second = decoded
    assert first == Notification("m")
    assert isinstance(second, Fault) and second.kind is FaultKind.INVALID_MESSAGE
    assert second.raw == b"5"


def test_encode_appends_exactly_one_newline() -> None:
    data = encode(Request("a\nb", "m", ["x\ny"]))
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1  # newlines inside strings are escaped
