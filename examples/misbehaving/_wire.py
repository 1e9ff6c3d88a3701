"""The plain, well-behaved protocol part that every misbehaving example shares.

Each misbehaving plugin should misbehave in exactly one advertised way, so that
what a user watches under the supervisor is that fault and nothing else. The
wire code (SPEC sections 3, 4, 6, 7) is therefore written once, here, and each
plugin only overrides the hook for its fault. Standard library only; nothing
from pipevisor is imported. The leading underscore keeps this file from ever
being mistaken for a plugin (discovery looks for ``pipevisor-*``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

SUPPORTED = ((1, 0), (1, 0))  # the protocol versions these plugins speak (SPEC 6.4)

Handler = Callable[[Any], Any]


class RpcError(Exception):
    """Raised by a handler to answer with a JSON-RPC error instead of a result."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code, self.message, self.data = code, message, data


def echo(params: Any) -> Any:
    """The one ordinary method every misbehaving plugin serves, so a call can be made."""
    if not isinstance(params, dict) or not isinstance(params.get("text"), str):
        raise RpcError(-32602, "Invalid params: expected {\"text\": string}", params)
    return {"text": params["text"]}


def _version(text: Any) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor)


class Plugin:
    """A sequential line-at-a-time plugin; subclasses override one hook each."""

    def __init__(self, name: str, methods: dict[str, Handler]) -> None:
        self.name = name
        self.methods = methods
        self.instance: int | None = None
        self.ready = False
        # SPEC 2.3: keep fd 1 for the protocol, point fd 1 at stderr for stray prints
        self.proto = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)

    def log(self, message: str) -> None:
        print(f"{self.name}: {message}", file=sys.stderr, flush=True)

    def write_line(self, data: bytes) -> None:
        """Write raw bytes plus a newline to the protocol stream (garbage uses it too)."""
        try:
            self.proto.write(data + b"\n")
            self.proto.flush()
        except BrokenPipeError:
            os._exit(0)  # SPEC 9.1: the host is gone

    def send(self, message: dict[str, Any]) -> None:
        self.write_line(json.dumps(message, separators=(",", ":")).encode())

    def answer(self, id_: Any, result: Any = None, error: RpcError | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_}
        if error is None:
            message["result"] = result
        else:
            message["error"] = {"code": error.code, "message": error.message}
            if error.data is not None:
                message["error"]["data"] = error.data
        self.send(message)

    def handshake(self, params: Any) -> dict[str, Any]:
        try:
            offer = params["protocolVersions"]
            low = max(_version(offer["min"]), SUPPORTED[0])
            high = min(_version(offer["max"]), SUPPORTED[1])
        except (KeyError, TypeError, ValueError):
            raise RpcError(-32602, "Invalid params: protocolVersions {min, max} expected",
                           params) from None
        if low > high:
            raise RpcError(-31050, "no common protocol version",
                           {"supported": {"min": "1.0", "max": "1.0"}, "requested": offer})
        plugin = params.get("plugin")
        self.instance = plugin.get("instance") if isinstance(plugin, dict) else None
        return {"protocolVersion": f"{high[0]}.{high[1]}",
                "plugin": {"name": self.name, "version": "1.0.0"},
                "methods": {m: {"version": "1.0"} for m in self.methods},
                "capabilities": {"shutdown": True}}

    def on_ready(self) -> None:
        """Called once the handshake is answered; the place to start misbehaving."""

    def on_request(self, id_: Any, method: str, params: Any) -> None:
        """Answer one request after the handshake (hangs overrides this to answer nothing)."""
        if method == "pipevisor/ping":
            self.answer(id_, {})
        elif method == "pipevisor/shutdown":
            self.answer(id_, None)
            self.log("shutdown requested: exiting with status 0")
            self.exit(0)
        elif method in self.methods:
            try:
                self.answer(id_, self.methods[method](params))
            except RpcError as exc:
                self.answer(id_, error=exc)
        else:
            self.answer(id_, error=RpcError(-32601, f"Method not found: {method}"))

    def on_eof(self) -> None:
        """stdin closed: exit 0 (SPEC 9.1); hangs overrides this to stay."""
        self.log("stdin closed: exiting with status 0")
        self.exit(0)

    def exit(self, status: int) -> None:
        sys.stderr.flush()
        os._exit(status)  # at once, even with a busy or sleeping thread around

    def run(self) -> None:
        self.log("started")
        for raw in sys.stdin.buffer:  # splits at b"\n" only (SPEC 3.2)
            line = raw.rstrip(b"\n").removesuffix(b"\r")
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.answer(None, error=RpcError(-32700, "Parse error"))
                continue
            if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
                if not isinstance(msg, dict) or ("result" not in msg and "error" not in msg):
                    self.answer(msg.get("id") if isinstance(msg, dict) else None,
                                error=RpcError(-32600, "Invalid Request"))
                continue  # a response: these plugins send no requests
            if "id" not in msg:
                continue  # notifications (pipevisor/cancel included) are ignored
            id_, method, params = msg["id"], msg["method"], msg.get("params")
            if method == "pipevisor/handshake" and not self.ready:
                try:
                    result = self.handshake(params)
                except RpcError as exc:
                    self.answer(id_, error=exc)
                    continue
                self.answer(id_, result)
                self.ready = True
                self.log(f"handshake done (instance {self.instance})")
                self.on_ready()
            elif not self.ready:
                self.answer(id_, error=RpcError(-31051, "not initialized"))
            else:
                self.on_request(id_, method, params)
        self.on_eof()
