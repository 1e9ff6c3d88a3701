"""Clients of a running daemon's control socket, for host applications and the CLI.

``Client`` is blocking; ``AsyncClient`` is anyio. Both give the same call
semantics as the embedded :class:`pipevisor.supervisor.Supervisor`: ``call`` returns the
plugin's result or raises the same :class:`pipevisor.supervisor.errors.CallError`
subclass the embedded supervisor would have raised (the daemon passes error
objects through unchanged, and :func:`error_from_object` maps them back).

    with Client() as daemon:
        print(daemon.call("echo", "echo", {"text": "hi"}, timeout=5))

The socket is the ``socket_path`` argument, else ``$PIPEVISOR_SOCKET``, else
:func:`pipevisor.supervisor.paths.default_socket_path` (where ``pipevisor run`` listens
by default).

What the daemon can say on its own (docs/bounds.md) is turned into exceptions
the caller can act on: :class:`DaemonBusy` (refused for lack of room: retry),
:class:`BadAnswer` (an answer over the line limit or not JSON: that request
fails, and every waiting one if the stream cannot be trusted any more),
:class:`EventsLagged` (a subscriber fell behind and was disconnected). A
connection the daemon closed because it was idle is reopened on the next
request, so a client kept for hours between calls keeps working.
"""

from __future__ import annotations

import select
import socket
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from pipevisor.protocol import (
    DEFAULT_MAX_LINE_BYTES,
    Fault,
    FaultKind,
    NotificationReceived,
    Peer,
    ProtocolFault,
    ResponseReceived,
)
from pipevisor.protocol.messages import RequestId
from pipevisor.supervisor.client import requests
from pipevisor.supervisor.client.errors import (
    BadAnswer,
    DaemonConnectionLost,
)
from pipevisor.supervisor.client.requests import ProgressListener, R
from pipevisor.supervisor.client.wire import (
    _GARBLED,
    _REOPEN,
    _absorb,
    _answer_id,
    _blocking_connect,
    _event_or_raise,
    _failure,
    _notice,
    _progress_of,
    _settle,
    _Unread,
    expected_daemon_uid,
    resolve_socket_path,
)


class Client:
    """Blocking client over one connection.

    Thread-safe: a lock lets one request at a time use the connection, so
    threads sharing a client are serialised; give each thread its own client
    for concurrent calls. ``events`` opens a connection of its own.

    ``max_answer_bytes`` is the longest answer line read (the daemon never
    writes a longer one); a longer or garbled answer raises :class:`BadAnswer`.

    Before anything is sent, the socket's server must be root, our own uid or
    ``daemon_uid`` (default ``$PIPEVISOR_DAEMON_UID``, a uid or user name), else
    :class:`pipevisor.supervisor.client.wire.UntrustedDaemon` (a planted socket never
    sees a request).
    """

    def __init__(self, socket_path: str | None = None, *, connect_timeout: float = 5.0,
                 max_answer_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 daemon_uid: int | str | None = None) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._daemon_uid = expected_daemon_uid(daemon_uid, self.socket_path)
        """Who may serve the socket besides root and us (``PIPEVISOR_DAEMON_UID``)."""
        self._connect_timeout = connect_timeout
        self._max_answer = max_answer_bytes
        self._lock = threading.Lock()
        self._sock: socket.socket | None = self._connect()
        self._peer = self._new_peer()
        self._lost: str | None = None
        """Why the daemon closed this connection (None while it is open)."""
        self._reopen = False
        """Whether a new connection is the remedy (idle close, garbled stream)."""
        self._lost_reason = "closed"
        """The daemon's reason in its notice (busy, idle, evicted ...), if it sent one."""

    def _new_peer(self) -> Peer:
        return Peer(max_line_bytes=self._max_answer)

    def _connect(self) -> socket.socket:
        sock = _blocking_connect(self.socket_path, self._connect_timeout, self._daemon_uid)
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _drop(self, reason: str, reopen: bool) -> None:
        """Stop using this connection; the next request opens a new one if ``reopen``."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._lost, self._reopen = reason, reopen

    def _ready_socket(self) -> socket.socket:
        """The connection to use: the current one unless the daemon closed it meanwhile
        (then a new one if that is the remedy; else the reason why not)."""
        sock = self._sock
        if sock is not None:
            self._take_pending(sock)
            sock = self._sock
        if sock is None:
            if not self._reopen:
                raise _failure(self.socket_path, self._lost_reason,
                               self._lost or "the connection was closed")
            sock = self._sock = self._connect()
            self._peer = self._new_peer()
            self._lost, self._reopen, self._lost_reason = None, False, "closed"
        return sock

    def _take_pending(self, sock: socket.socket) -> None:
        """Read, without waiting, what the daemon sent while we were not asking (a notice
        that it closed the connection, the end of the stream)."""
        poller = select.poll()  # (poll, not select: any fd number, and not the socket's
        poller.register(sock, select.POLLIN)  # timeout, which recv would wait out first)
        while poller.poll(0):
            try:
                data = sock.recv(65536)
            except OSError as exc:
                self._drop(str(exc) or "the daemon closed the connection", False)
                return
            if not data:
                if self._lost is None:
                    self._drop("the daemon closed the connection", False)
                else:
                    self._drop(self._lost, self._reopen)
                return
            for event in self._peer.receive_data(data):
                if isinstance(event, ProtocolFault):
                    note = _notice(event.fault)
                    if note is not None:
                        self._lost_reason = note[0]
                        self._lost, self._reopen = note[1], note[0] in _REOPEN

    def request(self, method: str, params: dict[str, Any] | None = None, *,
                on_progress: ProgressListener | None = None) -> Any:
        """One control request (see protocol/SPEC.md, "Control socket");
        ``on_progress`` hears the ``progress`` notifications sent for it."""
        with self._lock:
            for attempt in (1, 2):
                sock = self._ready_socket()
                try:
                    return self._exchange(sock, method, params, on_progress)
                except _Unread:
                    if attempt == 2:
                        raise DaemonConnectionLost(self.socket_path, self._lost
                                                   or "closed before our request") from None
            raise AssertionError("unreachable")

    def _exchange(self, sock: socket.socket, method: str, params: dict[str, Any] | None,
                  on_progress: ProgressListener | None = None) -> Any:
        ident, data = self._peer.send_request(method, params)
        try:
            sock.sendall(data)
        except OSError as exc:
            # the daemon may have refused or closed us: a notice before it says why
            self._take_pending(sock)
            if self._lost is not None:
                if self._reopen:
                    raise _Unread from None
                raise _failure(self.socket_path, self._lost_reason, self._lost) from None
            raise DaemonConnectionLost(self.socket_path, str(exc)) from None
        try:
            while True:
                for event in self._receive(sock, self._peer):
                    if isinstance(event, ResponseReceived):
                        if event.response.id == ident:
                            return _settle(method, event)
                    elif isinstance(event, ProtocolFault):
                        self._on_fault(event.fault, ident, method)
                    elif on_progress is not None and isinstance(event, NotificationReceived):
                        note = _progress_of(event)
                        if note is not None and note.get("id") == ident:
                            self._tell(on_progress, note, sock, ident)
        except (KeyboardInterrupt, SystemExit):
            # interrupted while waiting: tell the daemon, which cancels the work
            try:
                sock.sendall(self._peer.cancel(ident))
            except OSError:
                pass
            raise

    def _tell(self, listener: ProgressListener, note: dict[str, Any], sock: socket.socket,
              ident: RequestId) -> None:
        """A listener that raises ends its call: the daemon is told to cancel it, and the
        exception reaches the caller."""
        try:
            listener(note)
        except BaseException:
            try:
                sock.sendall(self._peer.cancel(ident))
            except OSError:
                pass
            raise

    def _on_fault(self, fault: Fault, ident: RequestId, method: str) -> None:
        """A line that is not the answer we wait for: raise if it means there will be none."""
        note = _notice(fault)
        if note is not None:
            reason, message = note
            self._lost_reason = reason
            self._drop(message, reason in _REOPEN)
            if reason in _REOPEN:
                raise _Unread
            raise _failure(self.socket_path, reason, message)
        if fault.kind is FaultKind.OVERSIZED_LINE:
            answered = _answer_id(fault)
            if answered in (ident, None):  # ours (one request at a time), or unreadable
                self._peer.cancel(ident, notify=False)
                raise BadAnswer(f"the answer to {method} could not be read: {fault.detail} "
                                "(the client's line limit)")
        elif fault.kind in _GARBLED:
            self._drop(f"garbled answer: {fault.detail}", True)
            raise BadAnswer(f"the answer to {method} could not be read ({fault.detail}); "
                            "the connection was closed")

    def _receive(self, sock: socket.socket, peer: Peer) -> list[Any]:
        try:
            data = sock.recv(65536)
        except OSError as exc:
            raise DaemonConnectionLost(self.socket_path, str(exc)) from None
        if not data:
            raise DaemonConnectionLost(self.socket_path, "the daemon closed the connection")
        return peer.receive_data(data)

    # -------------------------------------------------------- the API

    def _do(self, request: requests.Request[R],
            on_progress: ProgressListener | None = None) -> R:
        return request.read(self.request(request.method, request.params,
                                         on_progress=on_progress))

    def call(self, plugin: str, method: str, params: Any = None, *,
             timeout: float | None = None,
             on_progress: ProgressListener | None = None) -> Any:
        """Call ``method`` on ``plugin``: its result, or the CallError the embedded
        supervisor would raise. Interrupting it (Ctrl-C) closes the connection, which
        cancels the call in the daemon.

        ``on_progress`` is called (in this thread, while ``call`` waits) with each
        progress the plugin reports for the call: ``{"progress", "total"?, "message"?,
        "skipped"?}``; the daemon sends at most ~20 a second, the latest each time
        (``skipped`` counts those it left out). If it raises, the call is cancelled
        and the exception propagates."""
        return self._do(requests.call(plugin, method, params, timeout,
                                      on_progress is not None), on_progress)

    def notify(self, plugin: str, method: str, params: Any = None) -> None:
        self._do(requests.notify(plugin, method, params))

    def status(self) -> dict[str, Any]:
        return self._do(requests.status())

    def start(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        return self._do(requests.lifecycle("start", plugin, wait))

    def stop(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        return self._do(requests.lifecycle("stop", plugin, wait))

    def restart(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        return self._do(requests.lifecycle("restart", plugin, wait))

    def load(self, name_or_path: str, *, wait: float | None = None) -> dict[str, Any]:
        return self._do(requests.lifecycle("load", name_or_path, wait))

    def unload(self, plugin: str) -> dict[str, Any]:
        return self._do(requests.unload(plugin))

    def reload(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Re-read the daemon's configuration and apply it; ``dry_run``: only say what
        would change."""
        return self._do(requests.reload(dry_run))

    def logs(self, plugin: str, lines: int = 100) -> list[str]:
        """The newest ``lines`` stderr lines (fewer if they would make the answer larger
        than the daemon's cap; ``request("logs", ...)["omitted"]`` says how many)."""
        return self._do(requests.logs(plugin, lines))

    def metrics(self) -> str:
        """Every plugin's figures in the Prometheus text format (docs/metrics.md)."""
        return self._do(requests.metrics())

    @contextmanager
    def subscribe(self, plugins: list[str] | None = None,
                  kinds: list[str] | None = None, *,
                  since: float | None = None) -> Iterator[Iterator[dict[str, Any]]]:
        """Subscribe on a connection of its own; events published after ``with`` is
        entered are all delivered until the iterator raises :class:`EventsLagged` (the
        reader fell behind and the daemon ended the subscription)."""
        sock = self._connect()
        peer = self._new_peer()
        try:
            ident, data = peer.send_request("subscribe",
                                            requests.filters(plugins, kinds, since))
            try:
                sock.sendall(data)
            except OSError as exc:
                raise DaemonConnectionLost(self.socket_path, str(exc)) from None
            pending: deque[dict[str, Any]] = deque()
            while not self._absorb(self._receive(sock, peer), ident, pending):
                pass

            def iterate() -> Iterator[dict[str, Any]]:
                while True:
                    while pending:
                        yield _event_or_raise(pending.popleft())
                    self._absorb(self._receive(sock, peer), ident, pending)

            yield iterate()
        finally:
            sock.close()

    def _absorb(self, events: list[Any], ident: RequestId,
                pending: deque[dict[str, Any]]) -> bool:
        return _absorb(events, ident, pending, self.socket_path)

    def events(self, plugins: list[str] | None = None,
               kinds: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Live events until the generator is closed. Subscribes on first ``next``;
        use :meth:`subscribe` to be sure of events caused right after the call."""
        with self.subscribe(plugins, kinds) as events:
            yield from events


