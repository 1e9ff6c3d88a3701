"""A plugin that writes to stderr when asked (``say``) and as it exits (``bye``), for
the tests of the stderr tail kept across daemon restarts."""

from __future__ import annotations

import atexit
import os
import sys

from pipevisor.kit import Plugin

plugin = Plugin("talker", version="1.0.0")


@plugin.method("say")
def say(text: str) -> str:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    return text


def _bye() -> None:
    sys.stderr.write(f"bye from {os.getpid()}\n")
    sys.stderr.flush()


atexit.register(_bye)

if __name__ == "__main__":
    plugin.run()
