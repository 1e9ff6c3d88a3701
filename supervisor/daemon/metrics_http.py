"""A minimal HTTP endpoint that serves ``GET /metrics`` for Prometheus scrapers.

Why hand-written instead of a web framework: it answers one read-only URL, once
every few seconds, to a scraper on the same host or network; a framework would be
the largest dependency of the daemon for forty lines of work. It reads one request
head (bounded in size and time), answers (bounded in time), and closes the
connection; anything else gets the status code that says why. It exposes names and
figures, never control: the control socket stays the only way to change anything.

Whoever can reach the port can open connections, so they are bounded too
(docs/bounds.md): at most ``max_connections`` at once; one more makes the
connection that has waited longest for its request head leave, and when every
connection is busy answering, the new one gets ``503`` at once. Running out of file
descriptors in ``accept`` is survived the same way (an idle connection is closed to
make room, else the waiting client gets ``503`` through a spare descriptor), and
logged at most once per 10 s: the daemon never stops because of this port.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus

from pipevisor.supervisor.engine.supervisor import Supervisor
from pipevisor.supervisor.io.listening import AcceptGuard, RateLimitedLog, accept_forever, refuse

log = logging.getLogger("pipevisor.metrics")

MAX_HEAD = 8192
"""Largest request head read; a scraper sends a few hundred bytes."""
HEAD_TIMEOUT = 5.0
"""Seconds a client has to send its whole request head (slowloris: whatever it
dribbles, the connection ends at this deadline)."""
SEND_TIMEOUT = 10.0
"""Seconds a client has to take the whole answer."""
MAX_CONNECTIONS = 64
"""Connections served at once (a scraper needs one, every few seconds)."""


class MetricsListenError(Exception):
    """The metrics address could not be bound (in use, not ours, bad host)."""


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: str = "", send_body: bool = True) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode() + (body if send_body else b"")


BUSY = _response("503 Service Unavailable", b"pipevisor metrics: too many connections, "
                 b"retry later\n", extra="Retry-After: 1\r\n")


async def _read_head(stream: SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        data += await stream.receive(4096)
    return data


def answer(head: bytes | None, render: Callable[[], str]) -> bytes:
    """The whole response to one request head (None: the head was too large)."""
    if head is None:
        return _response("431 Request Header Fields Too Large", b"request head too large\n")
    parts = head.split(b"\n", 1)[0].strip().split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response("400 Bad Request", b"not an HTTP/1.x request line\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return _response("404 Not Found", b"pipevisor serves only /metrics here\n")
    if method not in (b"GET", b"HEAD"):
        return _response("405 Method Not Allowed", b"use GET\n", extra="Allow: GET, HEAD\r\n")
    return _response("200 OK", render().encode(), Supervisor.METRICS_CONTENT_TYPE,
                     send_body=method == b"GET")


@dataclass(eq=False)
class _Conn:
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reading: bool = True
    """Still waiting for its request head (the ones that may be made to leave)."""
    since: float = field(default_factory=time.monotonic)
    ended: anyio.Event = field(default_factory=anyio.Event)


class _Endpoint:
    def __init__(self, render: Callable[[], str], max_connections: int, head_timeout: float,
                 send_timeout: float, tg: TaskGroup) -> None:
        self.render = render
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.send_timeout = send_timeout
        self.tg = tg
        self.conns: dict[_Conn, None] = {}
        self.refusals = RateLimitedLog(log)

    def evict_reading(self) -> _Conn | None:
        """The connection waiting longest for its request head leaves (None: none waits)."""
        waiting = [c for c in self.conns if c.reading]
        if not waiting:
            return None
        victim = min(waiting, key=lambda c: c.since)
        del self.conns[victim]
        victim.scope.cancel()
        return victim

    def take(self, sock: socket.socket) -> None:
        if len(self.conns) >= self.max_connections:
            if self.evict_reading() is not None:
                self.refusals(logging.WARNING, "metrics: %d connections open: closed the one "
                              "waiting longest for its request to make room",
                              self.max_connections)
            else:
                self.refusals(logging.WARNING, "metrics: refused a connection with 503: all %d "
                              "connections are busy answering", self.max_connections)
                refuse(sock, BUSY)
                return
        conn = _Conn()
        self.conns[conn] = None
        self.tg.start_soon(self.handle, conn, sock)

    async def handle(self, conn: _Conn, sock: socket.socket) -> None:
        try:
            with conn.scope:
                try:
                    stream = await SocketStream.from_socket(sock)
                except OSError:
                    sock.close()
                    return
                async with stream:
                    try:
                        with anyio.fail_after(self.head_timeout):
                            head = await _read_head(stream)
                        conn.reading = False
                        data = answer(head, self.render)
                        with anyio.fail_after(self.send_timeout):
                            await stream.send(data)
                    except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError,
                            OSError):
                        pass  # the scraper went away or was too slow: nothing to answer
                    except Exception:  # a bug in rendering must not take the daemon down
                        log.exception("metrics request failed")
        finally:
            self.conns.pop(conn, None)
            conn.ended.set()

    def room_for_one(self) -> anyio.Event | None:
        """Out of descriptors: the connection waiting longest for its request leaves."""
        victim = self.evict_reading()
        return None if victim is None else victim.ended


def _raw_sockets(listener: SocketListener | anyio.abc.Listener[SocketStream]
                 ) -> list[socket.socket]:
    parts = getattr(listener, "listeners", None) or [listener]
    return [part.extra(SocketAttribute.raw_socket) for part in parts]


async def serve_metrics(render: Callable[[], str], host: str, port: int, *,
                        max_connections: int = MAX_CONNECTIONS,
                        head_timeout: float = HEAD_TIMEOUT,
                        send_timeout: float = SEND_TIMEOUT,
                        task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
                        ) -> None:
    """Serve until cancelled; ``task_status`` gets the bound (host, port) (port 0 picks
    a free one, for tests)."""
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise MetricsListenError(f"metrics_listen {host}:{port}: "
                                 f"{exc.strerror or exc}") from None
    guard = AcceptGuard("metrics")
    try:
        async with listener, anyio.create_task_group() as tg:
            bound = listener.extra(SocketAttribute.local_address)
            address = (str(bound[0]), int(bound[1])) if isinstance(bound, tuple) else (host,
                                                                                      port)
            shown = f"[{address[0]}]" if ":" in address[0] else address[0]
            log.info("metrics on http://%s:%d/metrics", shown, address[1])
            endpoint = _Endpoint(render, max_connections, head_timeout, send_timeout, tg)
            for sock in _raw_sockets(listener):
                tg.start_soon(partial(
                    accept_forever, sock, guard, take=endpoint.take,
                    make_room=endpoint.room_for_one,
                    room_made="closed the connection waiting longest for its request",
                    refusal=lambda exc: BUSY))
            task_status.started(address)
    finally:
        guard.close()
