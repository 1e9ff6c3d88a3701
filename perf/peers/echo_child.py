"""Raw Python JSON-RPC echo peer: the floor any Python plugin runtime can reach.

Deliberately framework-free (blocking reads, orjson, explicit flush) so that the
only costs left are the interpreter, the pipe and the scheduler.  Anything the
supervisor or pipevisor.kit adds on top shows up as a ratio against this peer.
"""

from __future__ import annotations

import sys

import orjson


def main() -> int:
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    dumps = orjson.dumps
    loads = orjson.loads
    newline = orjson.OPT_APPEND_NEWLINE
    try:
        # readline() on the buffered reader returns as soon as one full line has
        # arrived, so this never waits for a full buffer before answering.
        for line in iter(stdin.readline, b""):
            request = loads(line)
            response = {
                "jsonrpc": "2.0",
                "id": request["id"],
                "result": {"text": request["params"]["text"]},
            }
            stdout.write(dumps(response, option=newline))
            stdout.flush()
    except (BrokenPipeError, KeyboardInterrupt):
        # The parent went away or the run was interrupted: exiting quietly keeps
        # benchmark output free of tracebacks from peers that did nothing wrong.
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
