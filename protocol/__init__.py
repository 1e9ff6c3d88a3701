"""pipevisor's wire protocol, sans I/O: bytes in, events out; messages in, bytes out.

Nothing here reads a pipe, starts a process, looks at a clock or imports
anyio; ``pipevisor.supervisor`` and ``pipevisor.kit`` move the bytes. The written
specification for plugin authors is ``protocol/SPEC.md``.

Importing this package loads nothing else: each public name is imported from
its submodule the first time it is read, so ``from pipevisor.protocol import
HANDSHAKE`` costs no orjson, dataclasses or enum (a plugin SDK reads constants
before it answers the handshake). Every name in ``__all__`` stays importable
from here.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time; mypy reads this as typing's
if TYPE_CHECKING:
    from pipevisor.protocol.codec import Fault, FaultKind, decode_line, encode
    from pipevisor.protocol.errors import (
        EncodeError,
        ErrorCode,
        ErrorObject,
        HandshakeError,
        LocalProtocolError,
        ProtocolError,
        VersionError,
        is_local_code,
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
    from pipevisor.protocol.handshake import (
        CANCEL,
        HANDSHAKE,
        LOG,
        PING,
        PROGRESS,
        PROTOCOL_NAME,
        PROTOCOL_VERSIONS,
        SHUTDOWN,
        HandshakeParams,
        HandshakeResult,
        MethodInfo,
        choose_version,
        is_reserved,
        unsupported_version,
    )
    from pipevisor.protocol.messages import (
        ErrorResponse,
        Message,
        Notification,
        Request,
        RequestId,
        Response,
    )
    from pipevisor.protocol.peer import Peer
    from pipevisor.protocol.versions import Version, VersionRange, negotiate

_LIGHT = frozenset({"CANCEL", "DEFAULT_MAX_LINE_BYTES", "HANDSHAKE", "LOG", "PING", "PROGRESS",
                    "PROTOCOL_NAME", "SHUTDOWN", "is_reserved"})
"""Names served from ``constants``, which imports nothing: reading them stays cheap."""

_HOME = {
    "Fault": "codec", "FaultKind": "codec", "decode_line": "codec", "encode": "codec",
    "EncodeError": "errors", "ErrorCode": "errors", "ErrorObject": "errors",
    "HandshakeError": "errors", "LocalProtocolError": "errors", "ProtocolError": "errors",
    "VersionError": "errors", "is_local_code": "errors", "local_error": "errors",
    "standard_error": "errors",
    "Event": "events", "NotificationReceived": "events", "ProtocolFault": "events",
    "RequestReceived": "events", "ResponseReceived": "events",
    "LineSplitter": "framing", "OversizedLine": "framing",
    "PROTOCOL_VERSIONS": "handshake", "HandshakeParams": "handshake",
    "HandshakeResult": "handshake", "MethodInfo": "handshake", "choose_version": "handshake",
    "unsupported_version": "handshake",
    "ErrorResponse": "messages", "Message": "messages", "Notification": "messages",
    "Request": "messages", "RequestId": "messages", "Response": "messages",
    "Peer": "peer",
    "Version": "versions", "VersionRange": "versions", "negotiate": "versions",
    **dict.fromkeys(_LIGHT, "constants"),
}
"""Each public name and the submodule that defines it."""


def __getattr__(name: str) -> object:
    """Import a public name's submodule on first use (PEP 562), then cache the name here."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

__all__ = [
    "CANCEL",
    "DEFAULT_MAX_LINE_BYTES",
    "HANDSHAKE",
    "LOG",
    "PING",
    "PROGRESS",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSIONS",
    "SHUTDOWN",
    "EncodeError",
    "ErrorCode",
    "ErrorObject",
    "ErrorResponse",
    "Event",
    "Fault",
    "FaultKind",
    "HandshakeError",
    "HandshakeParams",
    "HandshakeResult",
    "LineSplitter",
    "LocalProtocolError",
    "Message",
    "MethodInfo",
    "Notification",
    "NotificationReceived",
    "OversizedLine",
    "Peer",
    "ProtocolError",
    "ProtocolFault",
    "Request",
    "RequestId",
    "RequestReceived",
    "Response",
    "ResponseReceived",
    "Version",
    "VersionError",
    "VersionRange",
    "choose_version",
    "decode_line",
    "encode",
    "is_local_code",
    "is_reserved",
    "local_error",
    "negotiate",
    "standard_error",
    "unsupported_version",
]
