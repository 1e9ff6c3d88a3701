"""The protocol's fixed values, and version parsing, with no import beyond the builtins.

Everything here is a plain ``str``, ``int``, ``tuple`` or ``range``, so a plugin
SDK can read the protocol's constants at start-up without paying for orjson,
dataclasses, enum or re (``pipevisor.kit`` answers the handshake before it loads
any of those). The richer types (:class:`~pipevisor.protocol.ErrorCode`,
:class:`~pipevisor.protocol.Version`, ...) are built on these values, so
there is one definition of each number and each parsing rule.
"""

from __future__ import annotations

PROTOCOL_NAME = "pipevisor"
PROTOCOL_VERSION_PAIRS = ((1, 0), (1, 0))
"""The protocol versions this package speaks, ``(min, max)`` as ``(major, minor)`` pairs."""

HANDSHAKE = "pipevisor/handshake"
CANCEL = "pipevisor/cancel"
PING = "pipevisor/ping"
SHUTDOWN = "pipevisor/shutdown"
LOG = "pipevisor/log"
PROGRESS = "pipevisor/progress"

RESERVED_PREFIXES = ("pipevisor/", "rpc.", "$/")
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""RFC 5424 severities, lowest first (SPEC 7.4)."""

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
"""SPEC 3.3: the line limit when the handshake names none."""
DEFAULT_GRACE_SECONDS = 2.0
"""SPEC 9.1 and 7.3: time to wind down after EOF, and ``graceSeconds`` when absent."""
METHOD_NAME_MAX = 256
"""SPEC 5: a declared method name is 1 to this many characters long."""

LOCAL_CODES = range(-31049, -30999)
"""-31049 .. -31000: produced by pipevisor only (SPEC 10)."""
PLUGIN_CODES = range(-31099, -31049)
"""-31099 .. -31050: protocol codes a plugin sends (SPEC 10)."""
JSONRPC_RESERVED = range(-32768, -31999)
"""-32768 .. -32000: reserved by JSON-RPC 2.0."""
PIPEVISOR_RESERVED = range(-31099, -30999)
"""-31099 .. -31000: pipevisor's block; a plugin's application codes stay outside it."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNSUPPORTED_PROTOCOL_VERSION = -31050
NOT_INITIALIZED = -31051
SHUTTING_DOWN = -31052
REQUEST_CANCELLED = -31053


def is_reserved(method: str) -> bool:
    """True for method names a plugin may not declare (SPEC 5)."""
    return method.startswith(RESERVED_PREFIXES)


def is_application_code(code: int) -> bool:
    """True for codes free for a plugin's own errors: outside -32768..-30000 (SPEC 10)."""
    return not -32768 <= code <= -30000


def parse_version_pair(text: object) -> tuple[int, int]:
    """``"MAJOR.MINOR"`` as ``(major, minor)``: each part ``0`` or 1-6 ASCII digits
    without a leading zero (``schemas/defs.json#/$defs/version``). Raises ValueError."""
    if isinstance(text, str) and text.isascii():
        major, dot, minor = text.partition(".")
        if dot and _part_ok(major) and _part_ok(minor):
            return int(major), int(minor)
    raise ValueError(f"not a MAJOR.MINOR version: {text!r}")


def _part_ok(part: str) -> bool:
    return part.isdigit() and len(part) <= 6 and (part == "0" or part[0] != "0")


def parse_range_pairs(obj: object) -> tuple[tuple[int, int], tuple[int, int]]:
    """A ``protocolVersions`` value, ``{"min": V, "max": V}`` or a single version, as a
    pair of pairs. Raises ValueError if it is malformed or empty (min above max)."""
    if isinstance(obj, str):
        low = high = parse_version_pair(obj)
    elif isinstance(obj, dict) and set(obj) == {"min", "max"}:
        low, high = parse_version_pair(obj["min"]), parse_version_pair(obj["max"])
    else:
        raise ValueError(f'not a version range (want {{"min": "X.Y", "max": "X.Y"}}): {obj!r}')
    if low > high:
        raise ValueError("empty version range {}.{}..{}.{}".format(*low, *high))
    return low, high


def negotiate_pairs(ours: tuple[tuple[int, int], tuple[int, int]],
                    theirs: tuple[tuple[int, int], tuple[int, int]]) -> tuple[int, int] | None:
    """SPEC 6.4: the highest version in both ranges, None when they do not overlap."""
    low = max(ours[0], theirs[0])
    high = min(ours[1], theirs[1])
    return high if low <= high else None
