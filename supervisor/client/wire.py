"""Request building and answer reading shared by the blocking and the async client:
what the daemon's notices, garbled lines and events mean to a caller."""

from __future__ import annotations

import os
import pwd
import re
import socket
import struct
import time
from collections import deque
from typing import Any

import orjson

from pipevisor.protocol import (
    ErrorObject,
    Fault,
    FaultKind,
    NotificationReceived,
    ProtocolFault,
    ResponseReceived,
)
from pipevisor.protocol.messages import ErrorResponse, RequestId
from pipevisor.supervisor.client.errors import (
    EVENT,
    SOCKET_ENV,
    AccessDenied,
    BadAnswer,
    ControlError,
    DaemonBusy,
    DaemonConnectionLost,
    DaemonNotRunning,
    EventsLagged,
)
from pipevisor.supervisor.errors import PipevisorError, error_from_object
from pipevisor.supervisor.paths import default_socket_path


class _Unread(Exception):
    """The daemon closed an idle connection before reading our request: safe to resend."""


_REOPEN = frozenset({"idle", "evicted"})
"""Notices after which the request was never read, and a new connection is the remedy."""

_GARBLED = frozenset({FaultKind.INVALID_JSON, FaultKind.INVALID_UTF8,
                      FaultKind.TRUNCATED_MESSAGE})

_ID_IN_HEAD = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')
_REASON = re.compile(rb'"reason"\s*:\s*"(\w+)"')
_MESSAGE = re.compile(rb'"message"\s*:\s*"((?:[^"\\]|\\.)*)')


def resolve_socket_path(socket_path: str | None = None) -> str:
    return socket_path or os.environ.get(SOCKET_ENV) or default_socket_path()


def _raise_for(method: str, error: ErrorObject) -> None:
    """The exception for an error answer: call errors as the embedded supervisor raises them."""
    data = error.data
    if isinstance(data, dict) and data.get("origin") == "control":
        raise ControlError(error)
    raise error_from_object(error)


PROGRESS = "progress"
"""The daemon's notification with a call's progress (a call made with ``progress``)."""


def _progress_of(event: NotificationReceived) -> dict[str, Any] | None:
    """The params of a ``progress`` notification, None for anything else."""
    n = event.notification
    if n.method != PROGRESS or not isinstance(n.params, dict):
        return None
    return n.params


def _settle(method: str, event: ResponseReceived) -> Any:
    msg = event.response
    if isinstance(msg, ErrorResponse):
        _raise_for(method, msg.error)
    return msg.result  # type: ignore[union-attr]


def _notice(fault: Fault) -> tuple[str, str] | None:
    """(reason, message) when ``fault`` is a notice the daemon sends before it closes a
    connection on its own (an error answer with id null; the daemon's ``control.notice``)."""
    if fault.kind is not FaultKind.UNEXPECTED_RESPONSE or fault.id is not None:
        return None
    raw = fault.raw  # the line's first 200 bytes: read what is there, even if cut
    reason = _REASON.search(raw)
    message = _MESSAGE.search(raw)
    text = message.group(1).decode("utf-8", "replace") if message else ""
    return (reason.group(1).decode() if reason else "unknown",
            text.replace('\\"', '"') or "the daemon closed the connection")


def _answer_id(fault: Fault) -> RequestId:
    """The id an oversized answer was for, read from the line's first bytes (None if not)."""
    found = _ID_IN_HEAD.search(fault.raw)
    if found is None:
        return None
    try:
        ident: RequestId = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return ident


def _failure(path: str, reason: str, message: str) -> PipevisorError:
    """The exception for a notice the daemon sent before closing the connection."""
    if reason == "busy":
        return DaemonBusy(path, message)
    if reason == "closed":  # no notice: the end of the stream was all it said
        return DaemonConnectionLost(path, message)
    if reason == "forbidden":
        return AccessDenied(path, message)
    return DaemonConnectionLost(path, f"the daemon closed the connection: {message}")


def _event_or_raise(event: dict[str, Any]) -> dict[str, Any]:
    """An event for the subscriber, or :class:`EventsLagged` for the daemon's last one."""
    if event.get("kind") == "lagged" and event.get("plugin") is None:
        raise EventsLagged(int(event.get("count") or 0))
    return event


def _absorb(events: list[Any], ident: RequestId, pending: deque[dict[str, Any]],
            socket_path: str) -> bool:
    """Queue event notifications; True once the subscribe answer was among ``events``.
    A notice or a garbled line raises (after the events before it are queued, the
    ``lagged`` one included)."""
    subscribed = False
    for event in events:
        if isinstance(event, ResponseReceived) and event.response.id == ident:
            _settle("subscribe", event)
            subscribed = True
        elif isinstance(event, NotificationReceived) and (
            event.notification.method == EVENT and isinstance(event.notification.params, dict)
        ):
            pending.append(event.notification.params)
        elif isinstance(event, ProtocolFault):
            note = _notice(event.fault)
            if note is not None:
                if note[0] == "lagged":  # its "lagged" event is queued: that one says it
                    continue
                raise _failure(socket_path, *note)
            if event.fault.kind in _GARBLED or event.fault.kind is FaultKind.OVERSIZED_LINE:
                raise BadAnswer(f"an event from the daemon could not be read: "
                                f"{event.fault.detail}")
    return subscribed

DAEMON_UID_ENV = "PIPEVISOR_DAEMON_UID"
"""The uid (or user name) of a daemon run by another user that clients may talk to."""


class UntrustedDaemon(PipevisorError):
    """The control socket is served by a process of a uid the client does not trust
    (not root, not the client's own uid, not the expected one): it may be a fake
    socket planted to capture requests, so nothing was sent."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"refusing the control socket {socket_path}: {reason}; nothing "
                         "was sent")
        self.socket_path = socket_path


def expected_daemon_uid(given: int | str | None, path: str) -> int | None:
    """The uid besides root and our own that may serve the socket: ``given``, else
    ``$PIPEVISOR_DAEMON_UID`` (a number or a user name), else None."""
    value = given if given is not None else os.environ.get(DAEMON_UID_ENV) or None
    if value is None or isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise UntrustedDaemon(path, f"{DAEMON_UID_ENV}={value!r} names no user") from None


def server_uid(sock: socket.socket) -> int | None:
    """The uid of the process that serves a connected Unix socket (SO_PEERCRED)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        getpeereid = getattr(os, "getpeereid", None)  # not in the stdlib on BSD/macOS yet
        return None if getpeereid is None else int(getpeereid(sock.fileno())[0])
    raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", raw)[1]
    return uid


def check_server(sock: socket.socket, path: str, expected: int | None) -> None:
    """Raise :class:`UntrustedDaemon` unless the socket is served by root, by our own
    uid or by ``expected``: checked before anything is sent (#14 item 1), so a socket
    planted in a folder someone else controls never receives a request."""
    uid = server_uid(sock)
    if uid is None:
        return  # no way to ask on this platform: the folder checks are all there is
    trusted = {0, os.geteuid()} | ({expected} if expected is not None else set())
    if uid not in trusted:
        want = ", ".join(str(u) for u in sorted(trusted))
        raise UntrustedDaemon(path, f"it is served by uid {uid}, not by uid {want} "
                              f"(set {DAEMON_UID_ENV}={uid} if that daemon is the one "
                              "you mean)")


def _blocking_connect(path: str, timeout: float,
                      daemon_uid: int | None = None) -> socket.socket:
    """Connect and check who serves the socket (:func:`check_server`); a full listen
    backlog (EAGAIN) is retried until ``timeout``, then reported as
    :class:`DaemonBusy`, not as a missing daemon."""
    expected = expected_daemon_uid(daemon_uid, path)
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(path)
        except FileNotFoundError:
            sock.close()
            raise DaemonNotRunning(path, "the socket does not exist") from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonNotRunning(path, "connection refused (stale socket file?)") from None
        except (BlockingIOError, TimeoutError) as exc:
            sock.close()
            if time.monotonic() + pause >= deadline:
                why = ("its listen backlog stayed full" if isinstance(exc, BlockingIOError)
                       else "it did not take the connection")
                raise DaemonBusy(path, f"{why} for {timeout:g} s; retry later") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            continue
        except OSError as exc:
            sock.close()
            raise DaemonNotRunning(path, str(exc) or type(exc).__name__) from None
        try:
            check_server(sock, path, expected)
        except BaseException:
            sock.close()
            raise
        return sock
