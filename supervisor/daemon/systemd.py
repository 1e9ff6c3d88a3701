"""sd_notify without libsystemd: the daemon tells its service manager how it is doing.

The protocol is one datagram of ``KEY=value`` lines sent to ``$NOTIFY_SOCKET``
(a path, or ``@name`` for an abstract socket). Writing it directly costs a few
lines and keeps systemd an optional runtime companion, not a dependency.
Without ``NOTIFY_SOCKET`` every method is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("pipevisor.systemd")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False
        self.watchdog_interval = _watchdog_interval(env)
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when not asked."""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keyword names upper-cased); False if nobody listens.
        Never raises: losing a status line must not stop the daemon."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify the service manager at %r: %s",
                            self.address.replace("\0", "@"), exc)
                self._warned = True
            return False

    def ready(self, status: str) -> bool:
        return self.notify(ready=1, status=status)

    def status(self, status: str) -> bool:
        return self.notify(status=status)

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic time systemd needs for Type=notify-reload."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(reloading=1, monotonic_usec=usec)

    def stopping(self) -> bool:
        return self.notify(stopping=1)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: os._Environ[str] | dict[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2e6 if value > 0 else None
