#!/usr/bin/env python3
"""A stdio server that behaves like a language server (stdlib only): Content-Length
framing, initialize/initialized, shutdown then exit, ``$/cancelRequest``.

``--record FILE``: every message received is appended to FILE as one JSON line.
``--pretty``: answers are pretty-printed (newlines inside bodies, as some servers do).
Requests are served each in a thread. Methods: initialize, shutdown, echo (params back),
sleep {seconds} (a cancelled one answers -32800 RequestCancelled, as LSP says), pid.
Exits 0 on ``exit`` after ``shutdown``, 1 on ``exit`` without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

IN = sys.stdin.buffer
OUT = sys.stdout.buffer
_write = threading.Lock()


def read_message() -> Any:
    length = None
    while True:
        line = IN.readline()
        if not line:
            return None
        line = line.strip()
        if not line:
            break
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    assert length is not None
    return json.loads(IN.read(length))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", default=None)
    ap.add_argument("--pretty", action="store_true")
    args = ap.parse_args()
    cancelled: dict[Any, threading.Event] = {}
    shut = False

    def send(msg: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **msg}, indent=2 if args.pretty else None)
        data = body.encode()
        with _write:
            OUT.write(b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; "
                      b"charset=utf-8\r\n\r\n" % len(data) + data)
            OUT.flush()

    def serve(ident: Any, method: str, params: Any) -> None:
        if method == "initialize":
            send({"id": ident, "result": {"capabilities": {"hoverProvider": True},
                                          "serverInfo": {"name": "lsp-like", "version": "0.1"}}})
        elif method == "shutdown":
            send({"id": ident, "result": None})
        elif method == "echo":
            send({"id": ident, "result": params})
        elif method == "pid":
            send({"id": ident, "result": os.getpid()})
        elif method == "sleep":
            if cancelled[ident].wait(float(params.get("seconds", 1))):
                send({"id": ident, "error": {"code": -32800, "message": "cancelled"}})
            else:
                send({"id": ident, "result": "slept"})
        else:
            send({"id": ident, "error": {"code": -32601, "message": "Method not found"}})

    while True:
        msg = read_message()
        if msg is None:
            return
        if args.record:
            with open(args.record, "a") as f:
                f.write(json.dumps(msg) + "\n")
        method, params = msg.get("method"), msg.get("params")
        if "id" not in msg:
            if method == "exit":
                os._exit(0 if shut else 1)
            if method == "$/cancelRequest":
                event = cancelled.get(params.get("id"))
                if event is not None:
                    event.set()
            continue
        if method == "shutdown":
            shut = True
        cancelled[msg["id"]] = threading.Event()
        threading.Thread(target=serve, args=(msg["id"], method, params), daemon=True).start()


if __name__ == "__main__":
    main()
