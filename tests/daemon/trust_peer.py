"""A control-socket peer for the trust tests, run as another uid: stdlib only, so it
needs nothing it may not read.

usage:
  trust_peer.py probe SOCKET             connect, ask ``status``, print the first line
                                         received (or ``{"connect_error": ...}``)
  trust_peer.py serve SOCKET READY LOG   a fake daemon: bind, listen, touch READY, then
                                         write to LOG every byte the first client sends
"""

from __future__ import annotations

import json
import os
import socket
import sys


def probe(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
    except OSError as exc:
        print(json.dumps({"connect_error": exc.strerror or str(exc)}))
        return
    try:
        sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
    except OSError:
        pass  # refused before reading: the notice is still there to read
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    print(buf.split(b"\n", 1)[0].decode() or json.dumps({"eof": True}))


def serve(path: str, ready: str, log: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(4)
    with open(ready, "w"):
        pass
    sock.settimeout(30)
    conn, _ = sock.accept()
    conn.settimeout(10)
    got = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
            if b"\n" in got:  # one request is all a fake daemon needs to capture
                break
    except OSError:
        pass
    with open(log + ".tmp", "wb") as fh:
        fh.write(got)
    os.replace(log + ".tmp", log)


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        probe(sys.argv[2])
    else:
        serve(*sys.argv[2:5])
