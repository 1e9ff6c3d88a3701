"""Peer reads the answer to a call in flight on a short path; whatever it makes of a
line must be exactly what the general classification makes of it (same events, same
counters, same requests left in flight), for answers and for near-answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipevisor.protocol import Peer
from pipevisor.protocol.codec import decode_line


class GeneralPathPeer(Peer):
    """The classification every line took before the short path existed."""

    def _handle_line(self, line: bytes, events: list[Any]) -> None:
        decoded = decode_line(line)
        if type(decoded) is list:
            self._handle_batch(decoded, events)
        else:
            self._dispatch(decoded, events, None)  # type: ignore[arg-type]


def _line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


CASES: list[Any] = [
    {"jsonrpc": "2.0", "id": 1, "result": {"a": 1}},
    {"jsonrpc": "2.0", "id": 1, "result": None},
    {"jsonrpc": "2.0", "id": 1, "result": [1, 2], "extra": True},
    {"jsonrpc": "2.0", "id": 99, "result": 1},          # not in flight
    {"jsonrpc": "2.0", "id": 2, "result": 1},           # abandoned: a late answer
    {"jsonrpc": "2.0", "id": True, "result": 1},        # a bool is no id
    {"jsonrpc": "2.0", "id": 1.0, "result": 1},         # a float id
    {"jsonrpc": "2.0", "id": None, "result": 1},
    {"jsonrpc": "2.0", "result": 1},                     # no id
    {"jsonrpc": "1.0", "id": 1, "result": 1},
    {"id": 1, "result": 1},
    {"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "m"}},
    {"jsonrpc": "2.0", "id": 1, "result": 1, "method": "x"},
    {"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "no"}},
    {"jsonrpc": "2.0", "id": "s1", "result": "str id"},
    [{"jsonrpc": "2.0", "id": 1, "result": 1}],          # a batch of answers
    "result",
]


@pytest.mark.parametrize("message", CASES, ids=[str(i) for i in range(len(CASES))])
def test_short_path_reads_a_line_as_the_general_path_does(message: Any) -> None:
    peers = [Peer(), GeneralPathPeer()]
    seen = []
    for peer in peers:
        peer.send_request("echo", {})           # id 1
        two, _ = peer.send_request("echo", {})  # id 2, then given up
        peer.cancel(two)
        if isinstance(message, dict) and message.get("id") == "s1":
            # a peer whose ids are strings
            peer._outgoing["s1"] = "echo"
        events = peer.receive_data(_line(message))
        seen.append((events, peer.stats, dict(peer._outgoing), peer.take_output()))
    assert seen[0] == seen[1]


def test_garbage_still_gets_its_fault() -> None:
    peer, ref = Peer(), GeneralPathPeer()
    assert peer.receive_data(b"{nope\n") == ref.receive_data(b"{nope\n")
    assert peer.receive_data(b"\xff\xfe\n") == ref.receive_data(b"\xff\xfe\n")
