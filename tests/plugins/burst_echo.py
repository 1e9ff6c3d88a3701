#!/usr/bin/env python3
"""An echo plugin that answers in bursts: every request in one read of stdin is answered
with one write, as a fast plugin under pipelined load does. Standard library only.

  pipevisor/handshake -> protocol 1.0, method echo, capability shutdown
  pipevisor/ping      -> {}
  pipevisor/shutdown  -> null, then exit 0
  echo PARAMS         -> PARAMS
"""

from __future__ import annotations

import json
import os
import sys

HANDSHAKE = {"protocolVersion": "1.0", "plugin": {"name": "burst-echo", "version": "1.0"},
             "methods": {"echo": {}}, "capabilities": {"shutdown": True}}


def main() -> int:
    pending = b""
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return 0
        *lines, pending = (pending + chunk).split(b"\n")
        out, stop = [], False
        for line in lines:
            msg = json.loads(line)
            if "id" not in msg:
                continue
            method = msg.get("method")
            if method == "pipevisor/handshake":
                result: object = HANDSHAKE
            elif method == "pipevisor/shutdown":
                result, stop = None, True
            elif method == "echo":
                result = msg.get("params")
            else:
                result = {}
            out.append(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}))
        if out:
            os.write(1, ("\n".join(out) + "\n").encode())
        if stop:
            return 0


if __name__ == "__main__":
    sys.exit(main())
