#!/usr/bin/env python3
"""A hostile plugin: answers the handshake like a good one, then attacks the host.

Standard library only, so it starts fast and depends on nothing the host offers.
Usage: hostile.py ATTACK [ARG ...]; attacks (after the handshake):

  serve                      a well-behaved echo server (echo, sleep, ping, shutdown)
  lines FILE                 write each line of FILE to stdout verbatim, then serve
  flood-requests             write requests to the host forever, never read stdin
  flood-invalid              write invalid JSON-RPC lines forever, never read stdin
  stderr-nonl                write stderr without newlines forever (and serve)
  log-flood                  send pipevisor/log notifications forever (and serve)
  notify-big COUNT BYTES     send COUNT notifications of BYTES each (and serve)
  close-stdout               close stdout and stay alive (reads stdin until EOF)
  close-stdin                close stdin and stay alive, answering nothing more
  host-flood COUNT           send COUNT host calls at once, then serve (reads answers)
  alloc BYTES                allocate BYTES at once when called with method 'alloc'
  script FILE                run the actions in FILE (JSON list) on a thread while serving:
                             ["raw", text] writes text (latin-1 bytes) as is,
                             ["repeat", n, text] writes it n times, ["sleep", seconds],
                             ["exit", code] ends the process at once

'serve' answers: echo {text} -> {text} (with "chatty": true it also logs, on stderr and
with pipevisor/log, before answering); sleep {seconds}; pipevisor/ping; pipevisor/shutdown;
say {stderr, log, error}: writes the stderr line, sends the pipevisor/log message and
answers with the error object, each only if given (plugin text the host must print safely).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

proto = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
stdin = sys.stdin.buffer
lock = threading.Lock()


def send(message: dict) -> None:
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    with lock:
        try:
            proto.write(data)
        except (BrokenPipeError, ValueError, OSError):
            os._exit(0)


def handshake() -> None:
    line = stdin.readline()
    if not line:
        os._exit(0)
    request = json.loads(line)
    send({"jsonrpc": "2.0", "id": request["id"], "result": {
        "protocolVersion": "1.0",
        "plugin": {"name": "hostile", "version": "1.0.0"},
        "methods": {"echo": {"version": "1.0"}, "sleep": {"version": "1.0"},
                    "alloc": {"version": "1.0"}, "connect": {"version": "1.0"}},
        "capabilities": {"shutdown": True},
    }})


def serve(alloc: int = 0) -> None:
    held = []
    for line in stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or "id" not in message or "method" not in message:
            continue
        method, ident = message["method"], message["id"]
        params = message.get("params") or {}
        if method == "pipevisor/shutdown":
            send({"jsonrpc": "2.0", "id": ident, "result": {}})
            os._exit(0)
        if method == "sleep":
            threading.Thread(target=_sleep_then_answer, args=(ident, params), daemon=True).start()
            continue
        if method == "connect":  # try the daemon's control socket from inside a plugin
            threading.Thread(target=_connect, args=(ident, params), daemon=True).start()
            continue
        if method == "alloc":
            held.append(bytearray(alloc))  # may fail under RLIMIT_DATA: MemoryError, exit 1
            for i in range(0, alloc, 4096):
                held[-1][i] = 1
        if method == "say":  # plugin text of its choosing, where the host prints it
            if "stderr" in params:
                os.write(2, params["stderr"].encode("latin-1") + b"\n")
            if "log" in params:
                send({"jsonrpc": "2.0", "method": "pipevisor/log",
                      "params": {"level": "warning", "message": params["log"]}})
            if "error" in params:
                send({"jsonrpc": "2.0", "id": ident, "error": params["error"]})
                continue
        if method == "echo" and isinstance(params, dict) and params.get("chatty"):
            send({"jsonrpc": "2.0", "method": "pipevisor/log",
                  "params": {"level": "info", "message": "chatty echo"}})
            os.write(2, b"chatty echo\n")
        result = params if method == "echo" else {}
        send({"jsonrpc": "2.0", "id": ident, "result": result})
    os._exit(0)


def _connect(ident: object, params: dict) -> None:
    if params.get("detach"):  # from a double-forked, setsid grandchild: escape the tree?
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                answer = _control_status(params["path"])
                with open(params["out"] + ".tmp", "w") as fh:
                    json.dump(answer, fh)
                os.replace(params["out"] + ".tmp", params["out"])
            os._exit(0)
        send({"jsonrpc": "2.0", "id": ident, "result": {"detached": True}})
        return
    send({"jsonrpc": "2.0", "id": ident, "result": _control_status(params["path"])})


def _control_status(path: str) -> dict:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        try:
            sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
        except OSError:
            pass  # refused and closed already: what it said before closing is still there
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        result = {"answer": data.decode(errors="replace")}
    except OSError as exc:
        result = {"error": str(exc)}
    finally:
        sock.close()
    return result


def _sleep_then_answer(ident: object, params: dict) -> None:
    time.sleep(float(params.get("seconds", 0)))
    send({"jsonrpc": "2.0", "id": ident, "result": {}})


def run_script(actions: list) -> None:
    for action in actions:
        kind = action[0]
        if kind == "raw":
            data = action[1].encode("latin-1")
        elif kind == "repeat":
            data = action[2].encode("latin-1") * action[1]
        elif kind == "sleep":
            time.sleep(action[1])
            continue
        else:  # exit
            os._exit(action[1])
        with lock:
            try:
                proto.write(data)
            except (BrokenPipeError, OSError):
                os._exit(0)


def main() -> None:
    attack, args = sys.argv[1], sys.argv[2:]
    handshake()
    if attack == "serve":
        serve()
    elif attack == "lines":
        with open(args[0], "rb") as fh:
            for line in fh:
                with lock:
                    proto.write(line if line.endswith(b"\n") else line + b"\n")
        serve()
    elif attack == "flood-requests":
        n = 0
        while True:
            n += 1
            send({"jsonrpc": "2.0", "id": n, "method": "nosuch", "params": {"pad": "x" * 200}})
    elif attack == "flood-invalid":
        while True:
            send({"jsonrpc": "2.0", "id": 1, "pad": "x" * 200})
    elif attack == "stderr-nonl":
        def spew() -> None:
            chunk = b"e" * 65536
            while True:
                os.write(2, chunk)
        threading.Thread(target=spew, daemon=True).start()
        serve()
    elif attack == "log-flood":
        def logs() -> None:
            while True:
                send({"jsonrpc": "2.0", "method": "pipevisor/log",
                      "params": {"level": "critical", "message": "flood " * 20}})
        threading.Thread(target=logs, daemon=True).start()
        serve()
    elif attack == "notify-big":
        count, size = int(args[0]), int(args[1])
        for _ in range(count):
            send({"jsonrpc": "2.0", "method": "big", "params": {"pad": "x" * size}})
        serve()
    elif attack == "close-stdout":
        proto.close()
        for _ in stdin:
            pass
        time.sleep(3600)
    elif attack == "close-stdin":
        os.close(0)
        time.sleep(3600)
    elif attack == "host-flood":
        for n in range(int(args[0])):
            send({"jsonrpc": "2.0", "id": f"h{n}", "method": "host.slow", "params": {}})
        serve()
    elif attack == "alloc":
        serve(int(args[0]))
    elif attack == "script":
        with open(args[0]) as fh:
            actions = json.load(fh)
        threading.Thread(target=run_script, args=(actions,), daemon=True).start()
        serve()
    else:
        sys.exit(f"unknown attack {attack!r}")


if __name__ == "__main__":
    main()
