"""The protocol plumbing both example greeters share (stdlib only): handshake, ping,
shutdown, one request at a time. Each greeter supplies its methods and their versions."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], Any]


class InvalidParams(Exception):
    """Params a method cannot use (a member missing or of the wrong type). The greeter answers
    it as -32602 and keeps serving: bad input from one caller must not end the plugin for all."""


def member(obj: Any, key: str, where: str = "params") -> Any:
    """``obj[key]``, or InvalidParams naming the missing member by its path (e.g. params.who.name),
    so the caller learns what to fix instead of the plugin dying on a KeyError."""
    if not isinstance(obj, dict):
        raise InvalidParams(f"{where} must be an object, got {type(obj).__name__}")
    if key not in obj:
        raise InvalidParams(f"missing field {where}.{key}")
    return obj[key]


def serve(name: str, methods: dict[str, tuple[str | None, Handler]]) -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, never into the protocol

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
        out.flush()

    ready = False  # SPEC 6.1: a second handshake is refused, the first one stands
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            send({"id": None, "error": {"code": -32700, "message": "Parse error"}})
            continue
        method, ident, params = msg.get("method"), msg.get("id"), msg.get("params")
        if ident is None:
            continue  # notifications: nothing to do for a greeter
        if method == "pipevisor/handshake" and ready:
            send({"id": ident, "error": {"code": -32600,
                                         "message": "Invalid Request: the handshake happens once"}})
        elif method == "pipevisor/handshake":
            ready = True
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
            try:
                result = methods[method][1](params)
            except InvalidParams as e:
                send({"id": ident, "error": {"code": -32602, "message": f"Invalid params: {e}"}})
            except Exception as e:  # a bug in a method answers that call; the plugin lives on
                print(f"{name}: {method} failed: {e!r}", file=sys.stderr, flush=True)
                send({"id": ident, "error": {"code": -32603, "message": f"{method} failed: {e!r}"}})
            else:
                send({"id": ident, "result": result})
        else:
            send({"id": ident, "error": {"code": -32601, "message": f"no method {method}"}})
