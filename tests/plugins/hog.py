#!/usr/bin/env python3
"""A plugin that hogs one resource, for the resource-limit tests (stdlib only).

Usage: hog.py MODE [--rate N] [--children N]
  memory   grow resident memory by --rate bytes per second, in 1 MiB steps
  burst    allocate --rate bytes at once, repeatedly (faster than any sampling)
  cpu      spin in a thread, keeping one core busy
  fork     start --children processes that each grow memory at --rate bytes/s
  files    open /dev/null without end; reports "EMFILE after N" on stderr when refused
  idle     do nothing (a well-behaved neighbour)
The hogging starts after the handshake, on a thread, so requests keep being answered.
Methods: echo, pid, hold (never answered: a call left in flight), alloc {"bytes": N}
(touch N more bytes on the main thread, then answer).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time

MODE = sys.argv[1]
RATE = int(sys.argv[sys.argv.index("--rate") + 1]) if "--rate" in sys.argv else 20 << 20
CHILDREN = int(sys.argv[sys.argv.index("--children") + 1]) if "--children" in sys.argv else 2
STEP = 1 << 20

OUT = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
lock = threading.Lock()
held: list[bytearray] = []


def send(message: dict[str, object]) -> None:
    with lock:
        OUT.write(json.dumps(message).encode() + b"\n")
        OUT.flush()


def log(text: str) -> None:
    print(f"hog: {text}", file=sys.stderr, flush=True)


def grow(rate: int) -> None:
    """Touch a fresh 1 MiB every STEP/rate seconds so it is resident, not just reserved."""
    while True:
        held.append(bytearray(b"x" * STEP))
        time.sleep(STEP / rate)


def burst() -> None:
    try:
        while True:
            held.append(bytearray(b"x" * RATE))
    except MemoryError:
        log(f"MemoryError after {len(held)} chunks")
        os._exit(3)


def spin() -> None:
    n = 0
    while True:
        n += 1


def fork_children() -> None:
    for _ in range(CHILDREN):
        if os.fork() == 0:
            os.closerange(3, 1 << 16)
            grow(RATE)
    while True:
        time.sleep(3600)


def open_files() -> None:
    files = []
    while True:
        try:
            files.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                log(f"EMFILE after {len(files)}")
                while True:
                    time.sleep(3600)
            raise


HOGS = {"memory": lambda: grow(RATE), "burst": burst, "cpu": spin, "fork": fork_children,
        "files": open_files, "idle": lambda: None}


def main() -> int:
    for raw in sys.stdin.buffer:
        msg = json.loads(raw)
        method, ident, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if ident is None:
            continue
        if method == "pipevisor/handshake":
            send({"jsonrpc": "2.0", "id": ident, "result": {
                "protocolVersion": "1.0", "plugin": {"name": "hog", "version": "1.0.0"},
                "methods": {m: {} for m in ("echo", "pid", "hold", "alloc")},
                "capabilities": {"shutdown": True}}})
            threading.Thread(target=HOGS[MODE], daemon=True).start()
        elif method == "pipevisor/shutdown":
            send({"jsonrpc": "2.0", "id": ident, "result": None})
            return 0
        elif method == "pipevisor/ping":
            send({"jsonrpc": "2.0", "id": ident, "result": {}})
        elif method == "echo":
            send({"jsonrpc": "2.0", "id": ident, "result": params})
        elif method == "pid":
            send({"jsonrpc": "2.0", "id": ident, "result": os.getpid()})
        elif method == "hold":
            pass
        elif method == "alloc":
            held.append(bytearray(b"\x01") * int(params["bytes"]))  # written, so resident
            send({"jsonrpc": "2.0", "id": ident, "result": len(held)})
        else:
            send({"jsonrpc": "2.0", "id": ident,
                  "error": {"code": -32601, "message": f"Method not found: {method}"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
