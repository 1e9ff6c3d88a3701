"""A minimal pipevisor plugin: standard library only, blocking reads, one thread.

Used by the supervisor benchmarks as "a stdlib-only echo": it speaks just
enough of the protocol (protocol/SPEC.md) to be supervised, so what the
benchmarks measure on top of ``raw-python-pipe`` is the supervisor, not the
plugin.  It deliberately imports nothing from pipevisor and uses the stdlib
``json`` module (not orjson), as an ordinary third-party plugin would.

- ``pipevisor/handshake`` -> protocol 1.0, method ``echo``, capability ``shutdown``
- ``pipevisor/ping`` -> ``{}``
- ``pipevisor/shutdown`` -> ``null``, then exit 0
- ``echo`` -> its params, unchanged
- anything else -> -32601; EOF on stdin -> exit 0

Each answer is written with one ``write`` and one ``flush``.
With ``--echo-version V`` the handshake declares ``echo`` as interface version V.
"""

from __future__ import annotations

import json
import sys

_HANDSHAKE_RESULT = {
    "protocolVersion": "1.0",
    "plugin": {"name": "stdlib-echo", "version": "1.0"},
    "methods": {"echo": {}},
    "capabilities": {"shutdown": True},
}


def main() -> int:
    # ``--echo-version 1.0`` declares ``echo`` as interface version 1.0, so a host
    # with that interface validates it (the validation-cost benchmark).
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-version":
        _HANDSHAKE_RESULT["methods"] = {"echo": {"version": sys.argv[2]}}
    readline = sys.stdin.buffer.readline
    out = sys.stdout.buffer
    write, flush = out.write, out.flush
    loads = json.loads
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    try:
        while True:
            line = readline()
            if not line:
                return 0  # stdin EOF: the host wants us gone
            try:
                msg = loads(line)
            except ValueError:
                continue  # not ours to answer: the host counts it as a fault
            if not isinstance(msg, dict) or "id" not in msg:
                continue  # notifications (pipevisor/cancel, ...) need no answer
            ident = msg["id"]
            method = msg.get("method")
            stop = False
            if method == "echo":
                reply = {"jsonrpc": "2.0", "id": ident, "result": msg.get("params")}
            elif method == "pipevisor/ping":
                reply = {"jsonrpc": "2.0", "id": ident, "result": {}}
            elif method == "pipevisor/handshake":
                reply = {"jsonrpc": "2.0", "id": ident, "result": _HANDSHAKE_RESULT}
            elif method == "pipevisor/shutdown":
                reply = {"jsonrpc": "2.0", "id": ident, "result": None}
                stop = True
            else:
                reply = {
                    "jsonrpc": "2.0",
                    "id": ident,
                    "error": {"code": -32601, "message": f"method not found: {method}"},
                }
            write((dumps(reply) + "\n").encode())
            flush()
            if stop:
                return 0
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
