#!/usr/bin/env python3
"""A plain JSON-RPC 2.0 server over stdio that knows nothing of pipevisor (stdlib only).

Unknown methods, ``pipevisor/handshake`` among them, get -32601. With
``--require-init`` it behaves like an MCP server: every call but ``initialize``
is refused (-32002) until ``initialize`` was answered and the notification
``notifications/initialized`` arrived. ``--banner TEXT`` writes a non-JSON line
first and then nothing else; ``--exit-at-once CODE`` exits after the banner.
``--answer-anything`` answers unknown methods (the handshake too) with their params as the result.
``--silent-unknown`` never answers unknown methods (breaking JSON-RPC 2.0, as some servers do).
Methods: initialize, echo, pid, crash, initialized (whether the sequence ran).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

OUT = sys.stdout.buffer


def send(msg: dict[str, Any]) -> None:
    OUT.write(json.dumps({"jsonrpc": "2.0", **msg}).encode() + b"\n")
    OUT.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--require-init", action="store_true")
    ap.add_argument("--banner", default=None)
    ap.add_argument("--exit-at-once", type=int, default=None)
    ap.add_argument("--answer-anything", action="store_true",
                    help="unknown methods get their params back as the result")
    ap.add_argument("--silent-unknown", action="store_true")
    args = ap.parse_args()
    if args.banner is not None:
        OUT.write(args.banner.encode() + b"\n")
        OUT.flush()
        if args.exit_at_once is not None:
            os._exit(args.exit_at_once)
        for _ in sys.stdin.buffer:  # never answers anything
            pass
        return
    if args.exit_at_once is not None:
        os._exit(args.exit_at_once)
    state = {"initialize": False, "initialized": False}
    for line in sys.stdin.buffer:
        msg = json.loads(line)
        method, params = msg.get("method"), msg.get("params")
        if "id" not in msg:
            if method == "notifications/initialized" and state["initialize"]:
                state["initialized"] = True
            continue
        ident = msg["id"]
        if method == "initialize":
            state["initialize"] = True
            send({"id": ident, "result": {"protocolVersion": "2025-06-18",
                                          "serverInfo": {"name": "plain", "version": "1"}}})
        elif args.require_init and not state["initialized"]:
            send({"id": ident, "error": {"code": -32002, "message": "server not initialized"}})
        elif method == "echo":
            send({"id": ident, "result": params})
        elif method == "pid":
            send({"id": ident, "result": os.getpid()})
        elif method == "initialized":
            send({"id": ident, "result": state["initialized"]})
        elif method == "crash":
            os._exit(5)
        elif args.answer_anything:
            send({"id": ident, "result": params})
        elif args.silent_unknown:
            pass
        else:
            send({"id": ident, "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
