"""The state of one JSON-RPC connection, either end, with no I/O.

Rules of this module (as in h11): no I/O, no clocks, no randomness, no
threads. Bytes go in through :meth:`Peer.receive_data`, events come out;
messages go in through the ``send_*`` methods, bytes come out. Whoever owns
the pipe moves the bytes. Request ids come from an injected factory so tests
are deterministic.

Either side may call the other, so a peer tracks two tables: requests *we*
sent that await an answer (``outgoing``) and requests the other side sent
that we still owe an answer to (``incoming``).

Replies that the protocol makes mandatory and that no application logic
decides (``Parse error`` to a garbage line, ``Invalid Request``, the array
answer to a batch) are queued internally and collected with
:meth:`Peer.take_output`, so the I/O layer writes them without knowing why.
Those automatic error replies are bounded: at most ``max_auto_replies`` wait
in the queue between two calls of :meth:`Peer.take_output`; the rest are
counted (``stats.unanswered``) and reported as faults, never queued, so a
peer flooding us with invalid messages cannot grow our memory.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipevisor.protocol.codec import (
    Decoded,
    Fault,
    FaultKind,
    decode_line,
    decode_value,
    encode,
    encode_request,
)
from pipevisor.protocol.content_length import ContentLengthSplitter
from pipevisor.protocol.content_length import frame as _content_length_frame
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
from pipevisor.protocol.framing import DEFAULT_MAX_LINE_BYTES, LineSplitter, OversizedLine
from pipevisor.protocol.handshake import CANCEL
from pipevisor.protocol.messages import (
    ErrorResponse,
    Notification,
    Params,
    Request,
    RequestId,
    Response,
)


@dataclass(slots=True)
class _Batch:
    """An incoming batch whose array answer is being assembled."""

    waiting: set[RequestId]
    replies: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class PeerStats:
    messages_in: int = 0
    messages_out: int = 0
    faults: int = 0
    late_responses: int = 0
    unanswered: int = 0
    """Invalid messages left unanswered because ``max_auto_replies`` was reached."""


class Peer:
    """One end of a newline-delimited JSON-RPC 2.0 connection.

    Invalid requests (valid JSON that is not a valid request: ``42``, ``[]``,
    ``{"jsonrpc": "2.0", "method": 1}``, an element of a batch) are always
    answered ``Invalid Request``, echoing the id when one can be read and with
    id null otherwise, as JSON-RPC 2.0 requires of whoever receives requests;
    both ends of a pipevisor connection do.

    ``answer_garbage``: also answer a line that is not JSON at all (or is too
    long) with ``Parse error``, id null. A plugin does (SPEC 3.5). A host
    reading a plugin's stdout does not: such lines are nearly always a stray
    debug print, which the plugin could not make sense of an answer to.

    ``max_auto_replies`` bounds the automatic error replies waiting in
    :meth:`take_output`'s queue; see the module docstring.
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        answer_garbage: bool = False,
        id_factory: Callable[[], RequestId] | None = None,
        remember_cancelled: int = 1024,
        max_auto_replies: int = 1024,
        content_length: bool = False,
    ) -> None:
        # ``content_length``: LSP's Content-Length framing instead of lines, both ways,
        # with the same bound on a message (protocol/content_length.py)
        self._splitter: LineSplitter | ContentLengthSplitter = (
            ContentLengthSplitter(max_line_bytes) if content_length
            else LineSplitter(max_line_bytes))
        self._frame = _content_length_frame if content_length else None
        self._answer_garbage = answer_garbage
        self._next_id: Callable[[], RequestId] = (
            id_factory if id_factory is not None else itertools.count(1).__next__
        )
        self._outgoing: dict[RequestId, str] = {}
        self._incoming: dict[RequestId, int | None] = {}  # id -> batch number or None
        self._batches: dict[int, _Batch] = {}
        self._batch_numbers = itertools.count()
        self._abandoned: OrderedDict[RequestId, None] = OrderedDict()
        self._remember = remember_cancelled
        self._output: list[bytes] = []
        self._max_auto = max_auto_replies
        self._auto = 0  # automatic error replies since the last take_output
        self.stats = PeerStats()

    # ------------------------------------------------------------------ state

    @property
    def outgoing(self) -> dict[RequestId, str]:
        """Requests we sent and still wait for: id -> method (read-only view by convention)."""
        return self._outgoing

    @property
    def incoming(self) -> frozenset[RequestId]:
        """Ids of requests we received and have not answered yet."""
        return frozenset(self._incoming)

    @property
    def buffered(self) -> int:
        return self._splitter.buffered

    # ---------------------------------------------------------------- receive

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for item in self._splitter.feed(data):
            if type(item) is bytes:
                self._handle_line(item, events)
            else:
                assert isinstance(item, OversizedLine)
                self._oversized(item, events)
        return events

    def receive_eof(self) -> list[Event]:
        """The peer closed its end: report an unterminated last line, if any."""
        events: list[Event] = []
        tail = self._splitter.end_of_input()
        if isinstance(tail, OversizedLine):
            self._oversized(tail, events)
        elif tail is not None:
            # Lenient: a last message without its newline is still a message.
            decoded = decode_line(tail)
            if isinstance(decoded, Fault):
                self._fault(
                    Fault(FaultKind.TRUNCATED_MESSAGE,
                          f"input ended in the middle of a line ({decoded.detail})", tail[:200]),
                    events,
                )
            else:
                self._handle_line(tail, events)
        return events

    def take_output(self) -> bytes:
        """Bytes the protocol obliges us to send (automatic error replies, batch answers)."""
        self._auto = 0
        if not self._output:
            return b""
        frame = self._frame
        out = b"".join(self._output if frame is None else map(frame, self._output))
        self._output.clear()
        return out

    def _oversized(self, item: OversizedLine, events: list[Event]) -> None:
        how = "" if item.complete else " (input ended before its newline)"
        self._fault(
            Fault(FaultKind.OVERSIZED_LINE,
                  f"line of {item.size} bytes exceeds the limit of "
                  f"{self._splitter.max_line_bytes} bytes and was skipped{how}", item.head),
            events,
        )
        if self._answer_garbage and self._may_auto_reply():
            self._queue_error(None, standard_error(ErrorCode.PARSE_ERROR, "line too long"))

    def _handle_line(self, line: bytes, events: list[Event]) -> None:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            decoded = decode_line(line)  # the fault, with its reason
        else:
            if type(obj) is dict and "result" in obj:
                # The common case first: the answer to a call in flight. The checks are
                # parse_value's for a response (a "2.0" jsonrpc, a string or integer id,
                # result and no error, no method) and the event is _handle_response's;
                # anything else takes the general path below.
                ident = obj.get("id")
                kind = type(ident)
                outgoing = self._outgoing
                if ((kind is int or kind is str) and ident in outgoing
                        and obj.get("jsonrpc") == "2.0" and "error" not in obj
                        and "method" not in obj):
                    self.stats.messages_in += 1
                    events.append(ResponseReceived(Response(ident, obj["result"]),
                                                   outgoing.pop(ident)))
                    return
            decoded = decode_value(obj, line)
        if type(decoded) is list:
            self._handle_batch(decoded, events)
        else:
            self._dispatch(decoded, events, None)  # type: ignore[arg-type]

    def _dispatch(self, msg: Decoded, events: list[Event], batch: int | None) -> None:
        t = type(msg)
        if t is Response or t is ErrorResponse:
            self._handle_response(msg, events)  # type: ignore[arg-type]
        elif t is Request:
            assert isinstance(msg, Request)
            if msg.id in self._incoming:
                self._fault(
                    Fault(FaultKind.DUPLICATE_REQUEST_ID,
                          f"request id {msg.id!r} is already in flight; second request dropped",
                          encode(msg)[:200].rstrip(b"\n"), msg.id),
                    events,
                )
                return
            self.stats.messages_in += 1
            self._incoming[msg.id] = batch
            if batch is not None:
                self._batches[batch].waiting.add(msg.id)
            events.append(RequestReceived(msg))
        elif t is Notification:
            self.stats.messages_in += 1
            events.append(NotificationReceived(msg))  # type: ignore[arg-type]
        else:
            assert isinstance(msg, Fault)
            # {"jsonrpc": "2.0", "id": X} alone: a broken answer if we wait for X, which
            # _fault settles; otherwise an invalid request, answered below.
            answers_ours = msg.maybe_response and msg.id in self._outgoing
            self._fault(msg, events)
            if answers_ours:
                return
            # JSON-RPC 2.0: an invalid request is answered -32600, id null when none can
            # be read, in a batch as an element of its array answer (SPEC 4.2, 3.4).
            if msg.kind is FaultKind.INVALID_MESSAGE and msg.is_request:
                if not self._may_auto_reply():
                    return
                error = standard_error(ErrorCode.INVALID_REQUEST, msg.detail)
                if batch is not None:
                    self._batches[batch].replies.append(ErrorResponse(msg.id, error).to_json())
                else:
                    self._queue_error(msg.id, error)
            elif msg.kind in (FaultKind.INVALID_JSON, FaultKind.INVALID_UTF8) and (
                self._answer_garbage and self._may_auto_reply()
            ):
                self._queue_error(None, standard_error(ErrorCode.PARSE_ERROR, msg.detail))

    def _may_auto_reply(self) -> bool:
        """Count one automatic error reply; False (and counted as unanswered) past the bound."""
        if self._auto >= self._max_auto:
            self.stats.unanswered += 1
            return False
        self._auto += 1
        return True

    def _handle_batch(self, items: list[Decoded], events: list[Event]) -> None:
        number = next(self._batch_numbers)
        self._batches[number] = _Batch(set())
        for item in items:
            self._dispatch(item, events, number)
        self._maybe_finish_batch(number)

    def _maybe_finish_batch(self, number: int) -> None:
        batch = self._batches[number]
        if batch.waiting:
            return
        del self._batches[number]
        if batch.replies:  # a batch of notifications only gets no answer at all
            self._output.append(orjson.dumps(batch.replies, option=orjson.OPT_APPEND_NEWLINE))

    def _handle_response(self, msg: Response | ErrorResponse, events: list[Event]) -> None:
        method = self._outgoing.pop(msg.id, None)
        if method is None:
            if msg.id in self._abandoned:
                del self._abandoned[msg.id]
                self.stats.late_responses += 1
                return
            self._fault(
                Fault(FaultKind.UNEXPECTED_RESPONSE,
                      f"response to id {msg.id!r}, which is not a request in flight",
                      encode(msg)[:200].rstrip(b"\n"), msg.id),
                events,
            )
            return
        self.stats.messages_in += 1
        events.append(ResponseReceived(msg, method))

    def _fault(self, fault: Fault, events: list[Event]) -> None:
        self.stats.faults += 1
        events.append(ProtocolFault(fault))
        # A malformed answer to a request we are waiting for must still settle
        # that request, or its caller would wait for ever.
        if fault.kind is FaultKind.INVALID_MESSAGE and (
            not fault.is_request or fault.maybe_response) and (
            fault.id is not None and fault.id in self._outgoing
        ):
            method = self._outgoing.pop(fault.id)
            error = local_error(ErrorCode.INVALID_RESPONSE,
                                f"malformed response from peer: {fault.detail}",
                                raw=fault.raw.decode("utf-8", "replace"))
            events.append(ResponseReceived(ErrorResponse(fault.id, error), method, local=True))

    def _queue_error(self, ident: RequestId, error: ErrorObject) -> None:
        self._output.append(encode(ErrorResponse(ident, error)))

    # ------------------------------------------------------------------- send

    def send_request(self, method: str, params: Params = None) -> tuple[RequestId, bytes]:
        """Start a call. Returns its id and the bytes to write."""
        ident = self._next_id()
        if ident in self._outgoing:
            raise LocalProtocolError(f"id factory produced {ident!r}, which is still in flight")
        data = encode_request(ident, method, params)
        if len(data) - 1 > self._splitter.max_line_bytes:  # _fits, inline on the hot path
            self._fits(data, "request")
        self._outgoing[ident] = method
        abandoned = self._abandoned
        if abandoned:  # an id factory may hand out an id given up on earlier
            abandoned.pop(ident, None)
        self.stats.messages_out += 1
        return ident, (data if self._frame is None else self._frame(data))

    def send_notification(self, method: str, params: Params = None) -> bytes:
        data = self._fits(encode(Notification(method, params)), "notification")
        self.stats.messages_out += 1
        return data if self._frame is None else self._frame(data)

    def _fits(self, data: bytes, what: str) -> bytes:
        """``data`` if its line is within the line limit, which binds the sender as
        much as the reader (SPEC 3.3 [M-3.3d]); else EncodeError, nothing is sent."""
        limit = self._splitter.max_line_bytes
        if len(data) - 1 > limit:
            raise EncodeError(f"the {what} would be a line of {len(data) - 1} bytes, over "
                              f"the line limit of {limit} bytes")
        return data

    def send_result(self, ident: RequestId, result: Any) -> bytes:
        """Answer an incoming request. Returns b"" while its batch is incomplete."""
        return self._answer(Response(ident, result))

    def send_error(self, ident: RequestId, error: ErrorObject) -> bytes:
        return self._answer(ErrorResponse(ident, error))

    def _answer(self, response: Response | ErrorResponse) -> bytes:
        if response.id not in self._incoming:
            raise LocalProtocolError(f"no request with id {response.id!r} awaits an answer")
        obj = response.to_json()
        data = encode(obj)
        if len(data) - 1 > self._splitter.max_line_bytes:
            # the answer is still owed, exactly once: an error that fits instead
            obj = ErrorResponse(response.id, standard_error(
                ErrorCode.INTERNAL_ERROR,
                f"the answer would be a line of {len(data) - 1} bytes, over the line "
                f"limit of {self._splitter.max_line_bytes} bytes")).to_json()
            data = encode(obj)
        batch = self._incoming.pop(response.id)
        self.stats.messages_out += 1
        if batch is None:
            return data if self._frame is None else self._frame(data)
        pending = self._batches[batch]
        pending.waiting.discard(response.id)
        pending.replies.append(obj)
        self._maybe_finish_batch(batch)
        return self.take_output()

    def cancel(self, ident: RequestId, *, notify: bool = True) -> bytes:
        """Stop waiting for ``ident``; a late answer is then dropped silently.

        Returns the cancel notification to send (``b""`` if ``notify`` is
        false or the request is not in flight).
        """
        if self._outgoing.pop(ident, None) is None:
            return b""
        self._abandoned[ident] = None
        while len(self._abandoned) > self._remember:
            self._abandoned.popitem(last=False)
        return self.send_notification(CANCEL, {"id": ident}) if notify else b""

    def fail_all(self, error: ErrorObject) -> list[ResponseReceived]:
        """Settle every outgoing request with ``error`` and forget incoming ones.

        What the supervisor does when the other end died: every caller gets
        exactly one answer, at once.
        """
        failed = [
            ResponseReceived(ErrorResponse(ident, error), method, local=True)
            for ident, method in self._outgoing.items()
        ]
        self._outgoing.clear()
        self._incoming.clear()
        self._batches.clear()
        return failed
