#!/usr/bin/env python3
"""A plugin that reports what it may do: its ids, no_new_privs, open fds, and whether a
write, read, bind or connect succeeds. Standard library only and started with
``python3 -I -S``, so it runs as any user (tests give it user=nobody) and inside a
Landlock sandbox that allows reading only the interpreter's folders. Methods:

  status            -> {Uid, Gid, Groups, NoNewPrivs} lines of /proc/self/status
  fds               -> {fd: readlink target} of every fd open in the plugin
  write {path}      -> "ok" or the errno name
  read {path}       -> "ok" or the errno name
  bind {port}       -> "ok" or the errno name (TCP on 127.0.0.1)
  pipevisor/handshake, ping, shutdown as the protocol says
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

METHODS = ("status", "fds", "write", "read", "bind")


def send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "NoNewPrivs"):
                out[key] = " ".join(value.split())
    return out


def fds() -> dict[str, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used, closed by now
            continue
    return out


def attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def write(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("written\n")


def read(path: str) -> None:
    with open(path) as fh:
        fh.read()


def bind(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def handle(method: str, params: Any) -> object:
    if method == "status":
        return status()
    if method == "fds":
        return fds()
    if method == "write":
        return attempt(lambda: write(params["path"]))
    if method == "read":
        return attempt(lambda: read(params["path"]))
    if method == "bind":
        return attempt(lambda: bind(params["port"]))
    raise KeyError(method)


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message:
            continue
        ident, method = message["id"], message.get("method", "")
        if method == "pipevisor/handshake":
            result: object = {"protocolVersion": "1.0",
                              "plugin": {"name": "priv", "version": "1.0.0"},
                              "methods": {m: {} for m in METHODS},
                              "capabilities": {"shutdown": True}}
        elif method == "pipevisor/ping":
            result = {}
        elif method == "pipevisor/shutdown":
            send({"jsonrpc": "2.0", "id": ident, "result": None})
            return
        else:
            result = handle(method, message.get("params"))
        send({"jsonrpc": "2.0", "id": ident, "result": result})


if __name__ == "__main__":
    main()
