"""One-request-per-process peer, the way mdbook-style preprocessors are driven.

Run with ``python -S`` so that site-packages (and therefore orjson) is not even
importable: this measures the cheapest Python process a spawn-per-call design
can hope for.  Real plugins import more and will only be slower.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    request = json.loads(sys.stdin.buffer.readline())
    response = {
        "jsonrpc": "2.0",
        "id": request["id"],
        "result": {"text": request["params"]["text"]},
    }
    sys.stdout.write(json.dumps(response, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
