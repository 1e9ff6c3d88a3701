"""Entry point so that the one command to remember is ``python -m perf``."""

from __future__ import annotations

import sys

from perf.harness import main

if __name__ == "__main__":
    sys.exit(main())
