"""The protocol plumbing both example greeters share (stdlib only): handshake, ping,
shutdown, one request at a time. Each greeter supplies its methods and their versions."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], Any]


def serve(name: str, methods: dict[str, tuple[str | None, Handler]]) -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, never into the protocol

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
        out.flush()

    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            send({"id": None, "error": {"code": -32700, "message": "Parse error"}})
            continue
        method, ident, params = msg.get("method"), msg.get("id"), msg.get("params")
        if ident is None:
            continue  # notifications: nothing to do for a greeter
        if method == "pipevisor/handshake":
            offered = params.get("interfaces", {}).get("greet")
            print(f"{name}: the host offers greet {offered}", file=sys.stderr, flush=True)
            send({"id": ident, "result": {
                "protocolVersion": "1.0",
                "plugin": {"name": name, "version": "1.0.0"},
                "methods": {m: ({"version": v} if v else {}) for m, (v, _) in methods.items()},
                "capabilities": {"shutdown": True}}})
        elif method == "pipevisor/ping":
            send({"id": ident, "result": {}})
        elif method == "pipevisor/shutdown":
            send({"id": ident, "result": None})
            return
        elif method in methods:
            print(f"{name}: {method} got {json.dumps(params)}", file=sys.stderr, flush=True)
            send({"id": ident, "result": methods[method][1](params)})
        else:
            send({"id": ident, "error": {"code": -32601, "message": f"no method {method}"}})
