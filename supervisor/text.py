"""Plugin-supplied text made safe to print on a terminal or in a line-based log.

A plugin controls its stderr, its ``pipevisor/log`` messages and the text of its
errors. Printed raw, a newline in that text forges a second log line that seems to
come from the daemon, and escape sequences rewrite what an operator's terminal shows
(move the cursor, change the title, hide text). :func:`printable` escapes every
control character (C0, DEL, C1, which includes the 8-bit CSI) and the Unicode
bidirectional overrides that reorder what is displayed, so one piece of plugin text
stays one visible line and shows what it holds. JSON output needs none of this: the
encoder escapes control characters itself and stays exact.
"""

from __future__ import annotations

__all__ = ["printable"]


def _escape(code: int) -> str:
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x1B: "\\e"}
    if code in named:
        return named[code]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_UNSAFE = [*range(0x20), 0x7F, *range(0x80, 0xA0),  # C0, DEL, C1
           0x200E, 0x200F, 0x2028, 0x2029,  # direction marks, line/paragraph separators
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # bidi embeddings, isolates
_TABLE = {code: _escape(code) for code in _UNSAFE}
_TABLE_KEEP_TABS = {code: esc for code, esc in _TABLE.items() if code != 0x09}


def printable(text: str, *, keep_tabs: bool = False) -> str:
    """``text`` with control and bidi-override characters written as escapes
    (``\\n``, ``\\e``, ``\\x07``, ``\\u202e``); a backslash stays as it is. Fast when
    there is nothing to escape (one ``str.isprintable`` scan)."""
    if text.isprintable():
        return text
    return text.translate(_TABLE_KEEP_TABS if keep_tabs else _TABLE)
