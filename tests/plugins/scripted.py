#!/usr/bin/env python3
"""A plugin whose every move the test decides, to check the *host's* side of SPEC.md.

Usage: scripted.py HANDSHAKE_JSON

HANDSHAKE_JSON is the answer to pipevisor/handshake, without "jsonrpc" and "id":
{"result": {...}} or {"error": {...}}; "delay" (seconds) waits before answering,
counting every line the host sends meanwhile.

After the handshake (standard library only, one line at a time):
  send {"lines": [TEXT, ...]}  writes each TEXT as one line on stdout, then answers {}
  received {}                  answers {"before": [...], "after": [...]}: the lines the host
                               sent before the handshake answer, and since it (this call's
                               own request left out)
  echo PARAMS                  answers PARAMS
  pipevisor/ping, pipevisor/shutdown as usual; anything else: -32601.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time

proto = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
stdin = sys.stdin.buffer


def write(line: bytes) -> None:
    proto.write(line + b"\n")


def answer(ident: object, result: object) -> None:
    write(json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}).encode())


def main() -> None:
    plan = json.loads(sys.argv[1])
    first = stdin.readline()
    ident = json.loads(first)["id"]
    before: list[str] = []
    deadline = time.monotonic() + float(plan.get("delay", 0))
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([stdin], [], [], left)
        if ready:
            line = stdin.readline()
            if not line:
                break
            before.append(line.decode().rstrip("\n"))
    reply = {"jsonrpc": "2.0", "id": ident}
    reply.update({k: v for k, v in plan.items() if k in ("result", "error")})
    write(json.dumps(reply).encode())
    after: list[str] = []
    for raw in stdin:
        line = raw.decode().rstrip("\n")
        try:
            message = json.loads(line)
        except ValueError:
            after.append(line)
            continue
        if not isinstance(message, dict) or "method" not in message or "id" not in message:
            after.append(line)
            continue
        method, ident, params = message["method"], message["id"], message.get("params")
        if method == "send":
            for text in params["lines"]:
                write(text.encode())
            answer(ident, {})
        elif method == "received":
            answer(ident, {"before": before, "after": after})
        elif method == "echo":
            answer(ident, params)
        elif method == "pipevisor/ping":
            answer(ident, {})
        elif method == "pipevisor/shutdown":
            answer(ident, None)
            return
        else:
            after.append(line)
            write(json.dumps({"jsonrpc": "2.0", "id": ident, "error": {
                "code": -32601, "message": f"Method not found: {method}"}}).encode())


if __name__ == "__main__":
    main()
