#!/usr/bin/env python3
"""A pipevisor plugin (stdlib only) whose method versions and behaviour come from flags.

    versioned_plugin.py --declare greet=1.0 --declare plain [--bad-result] [--protocol 1.0..1.0]

``greet`` answers in the shape of the major it declared (1.x: {"text"}, 2.x:
{"message"}), plus extra members a newer minor might add, so down-conversion is
visible; ``last_params`` returns the params the last ``greet`` received, so a
test sees what reached the plugin; ``plain`` echoes; ``pid``; ``crash``.
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


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--declare", action="append", default=[],
                    help="METHOD=MAJOR.MINOR, or METHOD alone for no version")
    ap.add_argument("--bad-result", action="store_true", help="greet breaks its own schema")
    ap.add_argument("--protocol", default="1.0")
    args = ap.parse_args()
    declared: dict[str, str | None] = {}
    for item in args.declare:
        name, _, version = item.partition("=")
        declared[name] = version or None
    last: list[Any] = [None]
    for line in sys.stdin.buffer:
        msg = json.loads(line)
        if "method" not in msg or "id" not in msg:
            continue
        ident, method, params = msg["id"], msg["method"], msg.get("params")
        if method == "pipevisor/handshake":
            offered = params["protocolVersions"]
            if not _v(offered["min"]) <= _v(args.protocol) <= _v(offered["max"]):
                send({"id": ident, "error": {"code": -31050, "message": "no common version",
                      "data": {"supported": {"min": args.protocol, "max": args.protocol},
                               "requested": offered}}})
                continue
            send({"id": ident, "result": {
                "protocolVersion": args.protocol,
                "plugin": {"name": "versioned", "version": "1"},
                "methods": {m: ({"version": v} if v else {}) for m, v in
                            {**declared, "last_params": None, "pid": None,
                             "crash": None}.items()},
                "capabilities": {"shutdown": True}}})
        elif method == "pipevisor/ping":
            send({"id": ident, "result": {}})
        elif method == "pipevisor/shutdown":
            send({"id": ident, "result": None})
            return
        elif method == "greet":
            last[0] = params
            major = (declared.get("greet") or "1.0").split(".")[0]
            p = params if isinstance(params, dict) else {}
            if args.bad_result:
                send({"id": ident, "result": {"text": 42}})
            elif major == "1":
                text = f"hello {p.get('name')}{p.get('punctuation', '')}"
                send({"id": ident, "result": {"text": text, "lang": "en", "mood": "newer"}})
            else:
                who = (p.get("person") or {}).get("name")
                send({"id": ident, "result": {"message": f"hello {who}", "emoji": ":)"}})
        elif method == "last_params":
            send({"id": ident, "result": last[0]})
        elif method == "plain":
            send({"id": ident, "result": params})
        elif method == "pid":
            send({"id": ident, "result": os.getpid()})
        elif method == "crash":
            os._exit(3)
        else:
            send({"id": ident, "error": {"code": -32601, "message": f"no method {method}"}})


if __name__ == "__main__":
    main()
