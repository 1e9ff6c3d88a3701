"""pipevisor's wire protocol, sans I/O: bytes in, events out; messages in, bytes out.

Nothing here reads a pipe, starts a process, looks at a clock or imports
anyio; ``pipevisor.supervisor`` and ``pipevisor.kit`` move the bytes. The written
specification for plugin authors is ``protocol/SPEC.md``.
"""

from __future__ import annotations

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
