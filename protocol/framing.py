"""Newline framing: bytes in arbitrary chunks -> complete lines, with a hard size bound.

Lines are split on the byte ``\\n`` only. ``str.splitlines()`` would also cut at
U+2028/U+2029, which orjson leaves unescaped inside strings, so decoding
before splitting would corrupt messages. A trailing ``\\r`` is dropped (CRLF
peers) and blank lines are skipped.

The splitter never holds more than ``max_line_bytes`` of an unfinished line: a
line that grows past the limit is dropped while it streams in and reported
once, with its size and first bytes, when its newline finally arrives (or at
end of input). The stream then resynchronises on the next line.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipevisor.protocol.constants import DEFAULT_MAX_LINE_BYTES  # 16 MiB

__all__ = ["DEFAULT_MAX_LINE_BYTES", "HEAD_BYTES", "LineSplitter", "OversizedLine"]

HEAD_BYTES = 200
"""How much of an offending line a fault keeps, for the log and the user."""


@dataclass(frozen=True, slots=True)
class OversizedLine:
    """A line longer than the limit was skipped. ``size`` excludes the newline."""

    size: int
    head: bytes
    complete: bool = True  # False when input ended before the newline arrived


class LineSplitter:
    """Incremental splitter. ``feed`` returns complete lines and oversize reports."""

    __slots__ = ("_buf", "_discarded", "_discarding", "_head", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False
        self._discarded = 0
        self._head = b""

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held right now (always <= max_line_bytes)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | OversizedLine]:
        out: list[bytes | OversizedLine] = []
        start = 0
        limit = self.max_line_bytes
        if self._discarding:
            nl = data.find(b"\n")
            want = HEAD_BYTES - len(self._head)  # the head is the line's first bytes
            if want > 0:
                self._head += data[: want if nl < 0 else min(nl, want)]
            if nl < 0:
                self._discarded += len(data)
                return out
            out.append(OversizedLine(self._discarded + nl, self._head))
            self._discarding = False
            self._discarded = 0
            self._head = b""
            start = nl + 1
        buf = self._buf
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if buf:
                size = len(buf) + nl - start
                if size > limit:
                    head = bytes(buf[:HEAD_BYTES]) + data[start : min(nl, start + HEAD_BYTES)]
                    out.append(OversizedLine(size, head[:HEAD_BYTES]))
                    buf.clear()
                    start = nl + 1
                    continue
                buf += data[start:nl]
                line = bytes(buf)
                buf.clear()
            else:
                if nl - start > limit:
                    out.append(OversizedLine(nl - start, data[start : min(nl, start + HEAD_BYTES)]))
                    start = nl + 1
                    continue
                line = data[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line and not line.isspace():
                out.append(line)
        rest = len(data) - start
        if rest:
            if len(buf) + rest > limit:
                head = (bytes(buf) + data[start : start + HEAD_BYTES])[:HEAD_BYTES]
                self._discarding = True
                self._discarded = len(buf) + rest
                self._head = head
                buf.clear()
            else:
                buf += data[start:]
        return out

    def end_of_input(self) -> bytes | OversizedLine | None:
        """Flush at EOF: the unterminated last line (if any) or its oversize report."""
        if self._discarding:
            report = OversizedLine(self._discarded, self._head, complete=False)
            self._discarding = False
            self._discarded = 0
            self._head = b""
            return report
        if not self._buf:
            return None
        line = bytes(self._buf)
        self._buf.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            return None
        return line
