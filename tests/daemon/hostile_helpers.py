"""Helpers for the hostile-client tests: a plugin that floods on request, raw control
connections, the daemon's RSS and file-descriptor limit."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

import orjson
import psutil

BLASTER = '''\
import sys
from pipevisor.kit import Plugin

plugin = Plugin("blaster", version="1.0.0")


@plugin.method("blast", version="1.0")
def blast(count: int, size: int) -> str:
    """``count`` notifications carrying ``size`` bytes each, then the answer."""
    blob = "z" * size
    for i in range(count):
        plugin._notify("blaster/big", {"i": i, "blob": blob})
    return "blasted"


@plugin.method("spew", version="1.0")
def spew(lines: int, size: int) -> str:
    """``lines`` stderr lines of ``size`` bytes each, then the answer."""
    line = "s" * size + "\\n"
    for _ in range(lines):
        sys.stderr.write(line)
    sys.stderr.flush()
    return "spewed"


@plugin.method("echo", version="1.0")
def echo(value: object = None) -> object:
    return value


plugin.run()
'''


def blaster_table(folder: str, name: str = "blaster") -> str:
    """A config table for the blaster plugin (its script written into ``folder``)."""
    path = os.path.join(folder, "blaster.py")
    with open(path, "w") as f:
        f.write(BLASTER)
    return (f'[plugins.{name}]\ncommand = ["{sys.executable}", "{path}"]\n'
            "health = { ping_interval = 0 }\n\n")


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def until(condition: Callable[[], bool], timeout: float, what: str,
          step: float = 0.02) -> None:
    """Poll a cheap condition until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def raw(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def request(sock: socket.socket, ident: int, method: str, params: object = None) -> None:
    msg: dict[str, object] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        msg["params"] = params
    sock.sendall(orjson.dumps(msg) + b"\n")


class Lines:
    """Reads JSON lines from a blocking socket, with a deadline per wait."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def next(self, timeout: float = 10.0) -> dict[str, object] | None:
        """The next message, or None at end of stream."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, object] = orjson.loads(line)
        return msg

    def until(self, pred: Callable[[dict[str, object]], bool],
              timeout: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise EOFError("the daemon closed the connection first")
            if pred(msg):
                return msg

    def end(self, timeout: float = 10.0) -> list[dict[str, object]]:
        """Every message until the daemon closes the connection."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            msg = self.next(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return seen
            seen.append(msg)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the other end closed (data before the end is read and dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(1 << 20):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
