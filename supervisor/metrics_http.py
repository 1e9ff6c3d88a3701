"""A minimal HTTP endpoint that serves ``GET /metrics`` for Prometheus scrapers.

Why hand-written instead of a web framework: it answers one read-only URL, once
every few seconds, to a scraper on the same host or network; a framework would be
the largest dependency of the daemon for forty lines of work. It reads one request
head (bounded in size and time), answers, and closes the connection; anything else
gets the status code that says why. It exposes names and figures, never control: the
control socket stays the only way to change anything.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from supervisor.metrics import CONTENT_TYPE

log = logging.getLogger("pipevisor.metrics")

MAX_HEAD = 8192
"""Largest request head read; a scraper sends a few hundred bytes."""
HEAD_TIMEOUT = 5.0


class MetricsListenError(Exception):
    """The metrics address could not be bound (in use, not ours, bad host)."""


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: str = "", send_body: bool = True) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode() + (body if send_body else b"")


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
    return _response("200 OK", render().encode(), CONTENT_TYPE, send_body=method == b"GET")


async def serve_metrics(render: Callable[[], str], host: str, port: int, *,
                        task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
                        ) -> None:
    """Serve until cancelled; ``task_status`` gets the bound (host, port) (port 0 picks
    a free one, for tests)."""
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise MetricsListenError(f"metrics_listen {host}:{port}: "
                                 f"{exc.strerror or exc}") from None

    async def handle(stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(HEAD_TIMEOUT):
                    head = await _read_head(stream)
                await stream.send(answer(head, render))
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass  # the scraper went away or was too slow: nothing to answer
            except Exception:  # a bug in rendering must not take the daemon down
                log.exception("metrics request failed")

    async with listener:
        bound = listener.extra(SocketAttribute.local_address)
        address = (str(bound[0]), int(bound[1])) if isinstance(bound, tuple) else (host, port)
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        log.info("metrics on http://%s:%d/metrics", shown, address[1])
        task_status.started(address)
        await listener.serve(handle)
