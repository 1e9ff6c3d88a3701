"""Listening sockets a hostile local user may hammer: one accept loop for the control
socket and the metrics endpoint that never ends the daemon.

Running out of file descriptors (EMFILE/ENFILE) makes ``accept`` fail while the
connection stays in the kernel's backlog; a loop that raised would stop the daemon, one
that retried at once would spin. Here a connection of the server's own may make room,
else the waiting client is turned away through a spare descriptor, and every failure is
logged at most once per interval.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio

log = logging.getLogger("pipevisor.control")

ACCEPT_BACKOFF = 0.1
"""Seconds the accept loop pauses after a failure no idle connection could make up for."""

REFUSAL_LOG_INTERVAL = 10.0
"""At most one log line per this many seconds for refused connections and accept
failures (with the count of those not logged)."""


class RateLimitedLog:
    """One log line per ``interval`` seconds at most; the next one says how many were not
    logged in between. For what a hostile client can repeat as fast as it likes."""

    def __init__(self, logger: logging.Logger, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._log = logger
        self._interval = interval
        self._next = 0.0
        self.suppressed = 0

    def __call__(self, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return
        if self.suppressed:
            message += " (%d more like it not logged)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self._next = now + self._interval
        self._log.log(level, message, *args)


_FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptGuard:
    """What a listening loop needs to survive running out of file descriptors.

    ``accept`` failing with EMFILE/ENFILE leaves the connection in the kernel's
    backlog, where its client waits for ever. The guard keeps one spare descriptor
    open: on EMFILE it closes it, accepts the waiting connection with the freed
    slot, lets the caller write a refusal and close, and opens the spare again.
    Failures are logged at most once per REFUSAL_LOG_INTERVAL. Shared by the
    control socket and the metrics endpoint."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.log = RateLimitedLog(log)
        self._spare: int | None = None
        self._reserve()

    def _reserve(self) -> None:
        if self._spare is None:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._spare = None

    @staticmethod
    def exhausted(exc: OSError) -> bool:
        return exc.errno in _FD_EXHAUSTED

    def accept_with_spare(self, sock: socket.socket) -> socket.socket | None:
        """Out of descriptors: accept one waiting connection with the spare one, for a
        refusal. None when there is no spare or nothing to accept."""
        if self._spare is None:
            self._reserve()
            return None
        os.close(self._spare)
        self._spare = None
        try:
            conn, _ = sock.accept()
        except OSError:
            conn = None
        return conn

    def after_refusal(self) -> None:
        self._reserve()

    def close(self) -> None:
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


def refuse(sock: socket.socket, data: bytes) -> None:
    """Write ``data`` if the socket takes it at once, then close: never wait on a client
    that is being turned away."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass
    finally:
        sock.close()


async def accept_forever(sock: socket.socket, guard: AcceptGuard, *,
                         take: Callable[[socket.socket], object],
                         make_room: Callable[[], anyio.Event | None],
                         room_made: str, refusal: Callable[[OSError], bytes]) -> None:
    """Accept on ``sock`` until cancelled, handing each connection to ``take``.

    When ``accept`` fails for lack of descriptors, ``make_room`` may close a connection
    of the server's own (it returns the event set once that one has ended, and
    ``room_made`` says what it did, for the log); without one, the waiting client gets
    ``refusal(exc)`` through the guard's spare descriptor. Other failures are logged and
    retried after ACCEPT_BACKOFF. Nothing here raises out of the loop but cancellation.
    """
    while True:
        await anyio.wait_readable(sock)
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            await _accept_failed(sock, guard, exc, make_room, room_made, refusal)
            continue
        take(conn)


async def _accept_failed(sock: socket.socket, guard: AcceptGuard, exc: OSError,
                         make_room: Callable[[], anyio.Event | None], room_made: str,
                         refusal: Callable[[OSError], bytes]) -> None:
    if not guard.exhausted(exc):
        guard.log(logging.ERROR, "%s: accept failed: %s", guard.what, exc)
        await anyio.sleep(ACCEPT_BACKOFF)
        return
    ended = make_room()
    guard.log(logging.ERROR, "%s: accept failed: %s; %s", guard.what, exc.strerror or exc,
              room_made if ended is not None else "refusing waiting clients as busy")
    if ended is not None:
        with anyio.move_on_after(1.0):
            await ended.wait()  # its descriptor is free once it has ended
        return
    conn = guard.accept_with_spare(sock)
    if conn is not None:
        refuse(conn, refusal(exc))
        guard.after_refusal()
    await anyio.sleep(ACCEPT_BACKOFF)
