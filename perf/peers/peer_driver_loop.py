"""The command loop every peer driver of perf/ shares (issue #20).

A driver runs in its peer's venv and is started by ``perf/cases/peers_rpc.py``.
Once its echo child is up it prints ``{"ready": true, "versions": ...}``, then
answers one JSON line per command line on stdin:

  {"op": "seq", "n": N}                       -> {"calls_ns": [ns of each call, in order]}
  {"op": "pipelined", "depth": D, "total": T} -> {"elapsed_ns": ns for T calls, D in flight}

An error is answered as {"error": "..."}; EOF on stdin ends the driver. Only the
standard library here: drivers in different venvs import it (their own folder is
first on sys.path).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib import metadata

TEXT = "hello from pipevisor perf"
PARAMS = {"text": TEXT}


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def ready(dists: Iterable[str]) -> None:
    emit({"ready": True, "versions": {d: metadata.version(d) for d in dists},
          "python": sys.version.split()[0]})


def parse(line: str) -> tuple[str, dict[str, int]]:
    cmd = json.loads(line)
    return str(cmd.pop("op")), {k: int(v) for k, v in cmd.items()}


def failure() -> dict[str, object]:
    return {"error": traceback.format_exc()}


def serve(seq: Callable[[int], list[int]], pipelined: Callable[[int, int], int],
          dists: Iterable[str]) -> None:
    """For drivers whose calls block: read commands, run them, answer, until EOF."""
    ready(dists)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            op, args = parse(line)
            if op == "seq":
                emit({"calls_ns": seq(args["n"])})
            elif op == "pipelined":
                emit({"elapsed_ns": pipelined(args["depth"], args["total"])})
            else:
                emit({"error": f"unknown op {op!r}"})
        except Exception:
            emit(failure())
