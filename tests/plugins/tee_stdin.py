"""Runs a server with its stdin copied to a file first: ``tee_stdin.py RECORD CMD...``.

The real servers in tests/foreign/test_real_servers.py do not say what they received;
this shows it (for instance that a cancel reached the server). The copy is byte for
byte, every chunk flushed before the server gets it. The server replaces nothing: this
process stays its parent, forwards SIGTERM/SIGINT to it and exits with its code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def main() -> int:
    record, command = sys.argv[1], sys.argv[2:]
    child = subprocess.Popen(command, stdin=subprocess.PIPE)
    assert child.stdin is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))

    def pump() -> None:
        assert child.stdin is not None
        with open(record, "ab", buffering=0) as out:
            while chunk := os.read(0, 65536):
                out.write(chunk)
                try:
                    child.stdin.write(chunk)
                    child.stdin.flush()
                except BrokenPipeError:
                    break
        try:
            child.stdin.close()  # our EOF is the server's
        except BrokenPipeError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
