#!/usr/bin/env python3
"""A plugin that closes its own pipes on request, to test that the host notices at once.

Standard library only and single-threaded: a pipe is closed by the thread that reads
it, so no blocked read() keeps the open file alive behind the close. Methods:

  echo PARAMS           -> PARAMS
  pid                   -> os.getpid() (a namespace pid under pvinit --ns)
  rlimits               -> {core, nofile, data, as: [soft, hard]} as the plugin sees them
                           (-1 for unlimited)
  close_stdout          close every copy of stdout, answer nothing, stay alive (keeps
                        reading stdin until EOF, then sleeps)
  close_stdin           close stdin, answer nothing, stay alive (sleeps)
  pipevisor/ping, pipevisor/shutdown as the protocol says
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Iterator

proto = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)  # stray prints go to stderr, so fd 1 is no second copy of the protocol pipe
stdin = os.fdopen(0, "rb", buffering=0)

LIMITS = {"core": resource.RLIMIT_CORE, "nofile": resource.RLIMIT_NOFILE,
          "data": resource.RLIMIT_DATA, "as": resource.RLIMIT_AS}


def send(message: dict[str, object]) -> None:
    proto.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")


def answer(ident: object, result: object) -> None:
    send({"jsonrpc": "2.0", "id": ident, "result": result})


def stay_alive() -> None:
    while True:
        time.sleep(3600)


def lines() -> Iterator[bytes]:
    buf = b""
    while True:
        data = stdin.read(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            yield line


def main() -> None:
    for line in lines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or "id" not in message:
            continue
        ident, method = message["id"], message.get("method")
        if method == "pipevisor/handshake":
            answer(ident, {
                "protocolVersion": "1.0",
                "plugin": {"name": "pipe", "version": "1.0.0"},
                "methods": {m: {} for m in ("echo", "pid", "rlimits", "close_stdout",
                                            "close_stdin")},
                "capabilities": {"shutdown": True},
            })
        elif method == "pipevisor/ping":
            answer(ident, {})
        elif method == "pipevisor/shutdown":
            answer(ident, None)
            os._exit(0)
        elif method == "echo":
            answer(ident, message.get("params"))
        elif method == "pid":
            answer(ident, os.getpid())
        elif method == "rlimits":
            answer(ident, {name: [-1 if v == resource.RLIM_INFINITY else v
                                  for v in resource.getrlimit(which)]
                           for name, which in LIMITS.items()})
        elif method == "close_stdout":
            proto.close()  # fd 1 is already a copy of stderr: no copy of stdout is left
            for _ in lines():
                pass
            stay_alive()
        elif method == "close_stdin":
            stdin.close()
            stay_alive()
        else:
            send({"jsonrpc": "2.0", "id": ident,
                  "error": {"code": -32601, "message": f"no method {method}"}})
    sys.exit(0)


if __name__ == "__main__":
    main()
