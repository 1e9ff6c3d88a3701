"""Content-Length framing (LSP's base protocol): bytes in arbitrary chunks -> message bodies.

A message is a header block, then the body::

    Content-Length: 52\\r\\n
    Content-Type: application/vscode-jsonrpc; charset=utf-8\\r\\n
    \\r\\n
    {"jsonrpc":"2.0","id":1,"method":"initialize",...}

The splitter has the same interface and the same bound as
:class:`pipevisor.protocol.framing.LineSplitter`, so :class:`~pipevisor.protocol.Peer`
takes either: it never holds more than ``max_line_bytes`` of a body, nor more than
:data:`MAX_HEADER_BYTES` of a header block. A body over the limit is skipped while it
streams in and reported once (:class:`OversizedLine`, its size and first bytes). A
header block without a valid ``Content-Length`` is handed on as it is, so the peer
reports it as a line that is not JSON; the stream then continues after the block.
Header lines may end in ``\\r\\n`` (the standard) or a bare ``\\n``.
"""

from __future__ import annotations

import re

from pipevisor.protocol.constants import DEFAULT_MAX_LINE_BYTES
from pipevisor.protocol.framing import HEAD_BYTES, OversizedLine

__all__ = ["MAX_HEADER_BYTES", "ContentLengthSplitter", "frame"]

MAX_HEADER_BYTES = 8192
"""Longest header block accepted; a longer one is skipped up to its end and reported."""

_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,15})[ \t]*$", re.IGNORECASE)
_END = re.compile(rb"\r?\n\r?\n")


def frame(message: bytes) -> bytes:
    """One encoded message (as the codec makes it, with its trailing newline) as a
    Content-Length framed message."""
    body = message[:-1] if message.endswith(b"\n") else message
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class ContentLengthSplitter:
    """Incremental splitter. ``feed`` returns complete bodies and oversize reports."""

    __slots__ = ("_buf", "_head", "_size", "_skip_header", "_skipping", "_want",
                 "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._want: int | None = None
        """Body bytes expected (header read); None while reading a header."""
        self._skipping = 0
        """Bytes of an oversized body still to skip."""
        self._head = b""
        self._skip_header = False
        """An oversized header block is being skipped up to its blank line."""
        self._size = 0
        """Size of the oversized body being skipped."""

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished message held right now."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | OversizedLine]:
        out: list[bytes | OversizedLine] = []
        view = memoryview(data)
        while view:
            if self._skipping:
                n = min(self._skipping, len(view))
                if len(self._head) < HEAD_BYTES:
                    self._head += bytes(view[: HEAD_BYTES - len(self._head)])
                self._skipping -= n
                view = view[n:]
                if not self._skipping:
                    out.append(OversizedLine(self._size, self._head))
                    self._head = b""
                continue
            if self._want is not None:
                n = min(self._want - len(self._buf), len(view))
                self._buf += view[:n]
                view = view[n:]
                if len(self._buf) == self._want:
                    out.append(bytes(self._buf))
                    self._buf.clear()
                    self._want = None
                continue
            # a header block
            start = max(0, len(self._buf) - 3)
            self._buf += view
            view = view[len(view):]
            while self._want is None and not self._skipping:
                end = _END.search(self._buf, start)
                if end is None:
                    if self._skip_header:
                        keep = self._buf[-3:]
                        self._buf = bytearray(keep)
                    elif len(self._buf) > MAX_HEADER_BYTES:
                        out.append(OversizedLine(len(self._buf), bytes(self._buf[:HEAD_BYTES]),
                                                 complete=False))
                        self._skip_header = True
                        self._buf = bytearray(self._buf[-3:])
                    break
                header = bytes(self._buf[: end.start()])
                rest = bytes(self._buf[end.end():])
                self._buf.clear()
                start = 0
                if self._skip_header:
                    self._skip_header = False
                else:
                    self._header(header, out)
                if self._want is not None or self._skipping:
                    view = memoryview(rest)  # the body: handled by the loop above
                    break
                self._buf += rest
        return out

    def _header(self, header: bytes, out: list[bytes | OversizedLine]) -> None:
        length = None
        for line in header.split(b"\n"):
            m = _LENGTH.match(line.rstrip(b"\r"))
            if m is not None:
                length = int(m.group(1))
        if length is None:
            if header.strip():
                out.append(header)  # the peer reports it: not JSON-RPC
            return
        if length > self.max_line_bytes:
            self._size = length
            self._skipping = length
            self._head = b""
            return
        if length == 0:
            out.append(b"")
            return
        self._want = length

    def end_of_input(self) -> bytes | OversizedLine | None:
        """Flush at EOF: a message cut short is reported with its first bytes."""
        if self._skipping:
            report = OversizedLine(self._size, self._head, complete=False)
            self._skipping = 0
            self._head = b""
            return report
        if not self._buf:
            self._want = None
            return None
        rest = bytes(self._buf)
        self._buf.clear()
        self._want = None
        return rest if rest.strip() else None
