#!/usr/bin/env python3
"""A stdio server that behaves like an MCP server (stdlib only), for the foreign-server tests.

Newline-delimited JSON-RPC 2.0. Requests are served each in a thread, so calls overlap
and a ping is answered while a tool sleeps. Before ``initialize`` every request but
``initialize`` and ``ping`` is refused -32602 (what the Python SDK does); after it,
until ``notifications/initialized``, -32002.

``--record FILE``: every message received is appended to FILE as one JSON line, so a
test can assert what reached the server (a cancel, the initialize params).
``--versions V1,V2``: the protocol versions it speaks, newest first (it counter-offers
its newest when the client's is not among them).

Methods: initialize, ping, tools/list, tools/call (tools ``echo`` {text}, ``sleep``
{seconds}: ends early when cancelled and then sends no answer, as MCP says), pid,
fail {code, message, data}: answers that error, ask {method, params}: sends that request
to the client and returns its result or ``{"error": ...}``, log {level, data, logger}:
sends notifications/message, concurrency: how many requests were in flight at most.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
from typing import Any

OUT = sys.stdout.buffer
_write = threading.Lock()
_record_lock = threading.Lock()


def send(msg: dict[str, Any]) -> None:
    data = json.dumps({"jsonrpc": "2.0", **msg}).encode() + b"\n"
    with _write:
        OUT.write(data)
        OUT.flush()


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.record = args.record
        self.versions = args.versions.split(",")
        self.initialize = False
        self.initialized = False
        self.cancelled: dict[Any, threading.Event] = {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.ids = itertools.count(1)
        self.waiting: dict[Any, tuple[threading.Event, dict[str, Any]]] = {}

    def note(self, msg: Any) -> None:
        if self.record:
            with _record_lock, open(self.record, "a") as f:
                f.write(json.dumps(msg) + "\n")

    def run(self) -> None:
        for line in sys.stdin.buffer:
            msg = json.loads(line)
            self.note(msg)
            if "method" not in msg:  # an answer to one of our requests
                waiter = self.waiting.pop(msg.get("id"), None)
                if waiter is not None:
                    waiter[1].update(msg)
                    waiter[0].set()
                continue
            method, params = msg["method"], msg.get("params")
            if "id" not in msg:
                if method == "notifications/initialized" and self.initialize:
                    self.initialized = True
                elif method == "notifications/cancelled" and isinstance(params, dict):
                    event = self.cancelled.get(params.get("requestId"))
                    if event is not None:
                        event.set()
                continue
            ident = msg["id"]
            self.cancelled[ident] = threading.Event()
            threading.Thread(target=self.serve, args=(ident, method, params),
                             daemon=True).start()

    def serve(self, ident: Any, method: str, params: Any) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            answer = self.answer(ident, method, params if params is not None else {})
        finally:
            with self.lock:
                self.in_flight -= 1
        cancelled = self.cancelled.pop(ident, threading.Event()).is_set()
        if answer is not None and not cancelled:
            send({"id": ident, **answer})

    def answer(self, ident: Any, method: str, params: Any) -> dict[str, Any] | None:
        if method == "initialize":
            self.initialize = True
            asked = params.get("protocolVersion")
            version = asked if asked in self.versions else self.versions[0]
            return {"result": {"protocolVersion": version,
                               "capabilities": {"tools": {}, "logging": {}},
                               "serverInfo": {"name": "mcp-like", "version": "0.1"}}}
        if method == "ping":
            return {"result": {}}
        if not self.initialize:
            return {"error": {"code": -32602, "message": "Invalid request parameters"}}
        if not self.initialized:
            return {"error": {"code": -32002, "message": "not initialized"}}
        if method == "tools/list":
            return {"result": {"tools": [
                {"name": "echo", "inputSchema": {"type": "object"}},
                {"name": "sleep", "inputSchema": {"type": "object"}}]}}
        if method == "tools/call":
            name, arguments = params.get("name"), params.get("arguments") or {}
            if name == "echo":
                return {"result": {"content": [{"type": "text",
                                                "text": arguments.get("text", "")}]}}
            if name == "sleep":
                self.cancelled[ident].wait(float(arguments.get("seconds", 1)))
                return {"result": {"content": [{"type": "text", "text": "slept"}]}}
            return {"error": {"code": -32602, "message": f"unknown tool {name}"}}
        if method == "pid":
            return {"result": os.getpid()}
        if method == "concurrency":
            return {"result": self.most}
        if method == "fail":
            return {"error": params}
        if method == "log":
            send({"method": "notifications/message", "params": params})
            return {"result": {}}
        if method == "ask":
            return {"result": self.ask(params["method"], params.get("params"))}
        return {"error": {"code": -32601, "message": "Method not found"}}

    def ask(self, method: str, params: Any) -> Any:
        ident = f"s{next(self.ids)}"
        event, reply = threading.Event(), {}
        self.waiting[ident] = (event, reply)
        msg: dict[str, Any] = {"id": ident, "method": method}
        if params is not None:
            msg["params"] = params
        send(msg)
        if not event.wait(10):
            return {"error": "no answer"}
        return reply.get("result", {"error": reply.get("error")})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", default=None)
    ap.add_argument("--versions", default="2025-06-18,2025-03-26,2024-11-05")
    Server(ap.parse_args()).run()


if __name__ == "__main__":
    main()
