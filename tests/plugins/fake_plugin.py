#!/usr/bin/env python3
"""A test plugin with switchable misbehaviour, speaking the protocol through
``pipevisor.protocol.Peer``.

Usage: fake_plugin.py [--flag ...]; see ``main`` for the flags. Methods:
echo, sleep {seconds}, crash {code}, pid, call_host {method, params},
spawn_tree {pidfile}, garbage, stderr_flood {lines}, huge {bytes}, cancelled.
Requests run on threads so pings and cancels are answered while others work.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from pipevisor.protocol import (
    CANCEL,
    HANDSHAKE,
    PING,
    SHUTDOWN,
    ErrorCode,
    ErrorObject,
    NotificationReceived,
    Peer,
    RequestReceived,
    ResponseReceived,
    VersionRange,
)

OUT = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)  # stray prints land on stderr, as the spec recommends

lock = threading.Lock()
peer = Peer(answer_garbage=True)
cancelled: dict[Any, threading.Event] = {}
cancelled_ids: list[Any] = []
host_waiters: dict[Any, tuple[threading.Event, list[Any]]] = {}
args: argparse.Namespace


def write(data: bytes) -> None:
    if data:
        with lock:
            OUT.write(data)


def answer(ident: Any, result: Any) -> None:
    with lock:
        data = peer.send_result(ident, result)
        OUT.write(data)


def fail(ident: Any, code: int, message: str) -> None:
    with lock:
        data = peer.send_error(ident, ErrorObject(code, message))
        OUT.write(data)


def call_host(method: str, params: Any) -> Any:
    with lock:
        ident, data = peer.send_request(method, params)
        done = threading.Event()
        box: list[Any] = []
        host_waiters[ident] = (done, box)
        OUT.write(data)
    done.wait(10)
    return box[0] if box else {"error": "no answer"}


def spawn_tree(pidfile: str) -> list[int]:
    """A child in our group and a double-forked, setsid grandchild: both must die with us."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        mid = os.fork()
        if mid == 0:
            os.setsid()
            grand = os.fork()
            if grand == 0:
                os.write(w, f"{os.getpid()}\n".encode())
                os.close(w)
                while True:
                    time.sleep(60)
            os._exit(0)
        os.waitpid(mid, 0)
        while True:
            time.sleep(60)
    os.close(w)
    grand_pid = int(os.read(r, 100).decode().strip())
    os.close(r)
    pids = [os.getpid(), child, grand_pid]
    with open(pidfile + ".tmp", "w") as f:
        f.write(" ".join(map(str, pids)))
    os.rename(pidfile + ".tmp", pidfile)
    return pids


def handle(ident: Any, method: str, params: Any) -> None:
    p = params if isinstance(params, dict) else {}
    if method == "echo":
        answer(ident, params)
    elif method == "sleep":
        global active, max_active
        with lock:
            active += 1
            max_active = max(max_active, active)
        ev = cancelled.setdefault(ident, threading.Event())
        interrupted = ev.wait(float(p.get("seconds", 1)))
        with lock:
            active -= 1
        if interrupted:
            fail(ident, ErrorCode.REQUEST_CANCELLED, "cancelled")
        else:
            answer(ident, {"slept": p.get("seconds", 1)})
        cancelled.pop(ident, None)
    elif method == "max_active":
        answer(ident, max_active)
    elif method == "crash":
        sys.stderr.write(f"fake plugin crashing on purpose with code {p.get('code', 3)}\n")
        sys.stderr.flush()
        os._exit(int(p.get("code", 3)))
    elif method == "pid":
        answer(ident, os.getpid())
    elif method == "call_host":
        answer(ident, call_host(p["method"], p.get("params")))
    elif method == "spawn_tree":
        answer(ident, spawn_tree(p["pidfile"]))
    elif method == "garbage":
        write(b"this is not json\n")
        answer(ident, "ok")
    elif method == "stderr_flood":
        chunk = ("x" * 100 + "\n") * 100
        for _ in range(int(p.get("lines", 10000)) // 100):
            sys.stderr.write(chunk)
        sys.stderr.flush()
        answer(ident, "flooded")
    elif method == "huge":
        answer(ident, "y" * int(p.get("bytes", 1000)))
    elif method == "reserved_error":
        # a plugin must not speak with pipevisor's voice: a local code with odd data
        with lock:
            OUT.write(peer.send_error(ident, ErrorObject(ErrorCode.PLUGIN_CRASHED, "forged",
                                                         "not a dict")))
    elif method == "env":
        answer(ident, dict(os.environ))
    elif method == "fds":
        answer(ident, sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
    elif method == "cancelled":
        answer(ident, cancelled_ids)
    elif method == "as":  # one method name for calls that each do something else
        handle(ident, p.get("method", ""), p.get("params"))
    elif method == "hang":
        global hung
        hung = True
        answer(ident, "hanging")
    else:
        fail(ident, ErrorCode.METHOD_NOT_FOUND, f"no method {method}")


hung = False
active = 0
max_active = 0  # most "sleep" calls this plugin ever ran at once


def main() -> None:
    global args
    ap = argparse.ArgumentParser()
    ap.add_argument("--crash-at-start", type=int, default=None)
    ap.add_argument("--slow-start", type=float, default=0.0)
    ap.add_argument("--protocol", default="1.0..1.0")
    ap.add_argument("--no-shutdown-cap", action="store_true")
    ap.add_argument("--ignore-sigterm", action="store_true")
    ap.add_argument("--ignore-eof", action="store_true")
    ap.add_argument("--garbage-at-start", action="store_true")
    ap.add_argument("--exit-on-shutdown", type=int, default=0)
    ap.add_argument("--max-concurrency", type=int, default=None)
    ap.add_argument("--no-handshake", action="store_true")
    ap.add_argument("--uses", action="append", default=[],
                    help="METHOD=MAJOR.MINOR: a host method declared in the handshake answer")
    args = ap.parse_args()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.crash_at_start is not None:
        sys.stderr.write("fake plugin: failing at start on purpose\n")
        sys.exit(args.crash_at_start)
    if args.slow_start:
        time.sleep(args.slow_start)
    if args.garbage_at_start:
        write(b"hello from a debug print\n")
    low, _, high = args.protocol.partition("..")
    supported = VersionRange.parse({"min": low, "max": high or low})
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    while True:
        data = stdin.read(65536)
        if not data:
            if args.ignore_eof:
                while True:
                    time.sleep(60)
            os._exit(0)
        if hung:
            continue  # read but never answer: looks alive, is not
        with lock:
            events = peer.receive_data(data)
            out = peer.take_output()
        write(out)
        for event in events:
            if isinstance(event, RequestReceived):
                req = event.request
                if req.method == HANDSHAKE:
                    handshake(req.id, req.params, supported)
                elif req.method == PING:
                    answer(req.id, {})
                elif req.method == SHUTDOWN:
                    answer(req.id, None)
                    os._exit(args.exit_on_shutdown)
                else:
                    threading.Thread(target=handle, args=(req.id, req.method, req.params),
                                     daemon=True).start()
            elif isinstance(event, NotificationReceived):
                n = event.notification
                if n.method == CANCEL and isinstance(n.params, dict):
                    ident = n.params.get("id")
                    cancelled_ids.append(ident)
                    cancelled.setdefault(ident, threading.Event()).set()
            elif isinstance(event, ResponseReceived):
                waiter = host_waiters.pop(event.response.id, None)
                if waiter is not None:
                    resp = event.response
                    waiter[1].append(resp.to_json().get("result", resp.to_json().get("error")))
                    waiter[0].set()


handshake_done = False


def handshake(ident: Any, params: Any, supported: VersionRange) -> None:
    global handshake_done
    if args.no_handshake:
        fail(ident, ErrorCode.METHOD_NOT_FOUND, "Method not found")
        return
    if handshake_done:  # SPEC 6.1: answered -32600, the first handshake stays in force
        fail(ident, ErrorCode.INVALID_REQUEST, "Invalid Request: the handshake happens once")
        return
    from pipevisor.protocol import HandshakeError, HandshakeParams, choose_version

    try:
        hp = HandshakeParams.from_json(params)
        version = choose_version(hp, supported)
    except HandshakeError as exc:
        with lock:
            OUT.write(peer.send_error(ident, exc.error))
        return
    caps: dict[str, Any] = {"cancel": True, "shutdown": not args.no_shutdown_cap}
    if args.max_concurrency:
        caps["maxConcurrency"] = args.max_concurrency
    answer(ident, {
        "protocolVersion": str(version),
        "plugin": {"name": hp.plugin_name, "version": "0.0.1"},
        "methods": {m: {} for m in ("echo", "sleep", "crash", "pid", "call_host", "spawn_tree",
                                    "garbage", "stderr_flood", "huge", "cancelled", "hang", "env",
                                    "fds", "reserved_error", "max_active")},
        "capabilities": caps,
        **({"hostMethods": {m: {"version": v} if v else {} for m, _, v in
                            (u.partition("=") for u in args.uses)}} if args.uses else {}),
    })
    handshake_done = True


if __name__ == "__main__":
    main()
