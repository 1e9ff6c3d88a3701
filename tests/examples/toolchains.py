"""The toolchains of the language examples: what each needs, and what to do when it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BUILD = ROOT / "scripts" / "build-examples"


@dataclass(frozen=True)
class Example:
    lang: str
    executable: str
    """Path under examples/ of the plugin (for compiled ones: where the build puts it)."""
    tools: tuple[tuple[str, str], ...]
    """(program, how to install it) pairs the example needs, to build or to run."""
    compiled: bool = False
    needs_cjson: bool = False


LANGUAGES = (
    Example("bash", "bash-jq/pipevisor-bash-echo",
            (("bash", "apt-get install bash"), ("jq", "apt-get install jq"))),
    Example("node", "node/pipevisor-node-echo", (("node", "apt-get install nodejs"),)),
    Example("go", "go/pipevisor-go-echo", (("go", "apt-get install golang-go"),), compiled=True),
    Example("c", "c/pipevisor-c-echo",
            (("cc", "apt-get install gcc"), ("make", "apt-get install make")),
            compiled=True, needs_cjson=True),
)


def missing_toolchain(example: Example, path: str | None = None) -> str | None:
    """Why ``example`` cannot be built or run here (what to install), or None."""
    for program, install in example.tools:
        if shutil.which(program, path=path) is None:
            return f"{program} not found: {install}"
    if example.needs_cjson:
        cc = shutil.which("cc", path=path)
        probe = subprocess.run([str(cc), "-E", "-x", "c", "-"], input=b"#include <cjson/cJSON.h>\n",
                               capture_output=True, check=False)
        if probe.returncode != 0:
            return "cJSON not found (no <cjson/cJSON.h>): apt-get install libcjson-dev"
    return None


def unavailable(reason: str) -> None:
    """Skip, or fail when the toolchains are required (CI)."""
    if os.environ.get("PIPEVISOR_REQUIRE_TOOLCHAINS") == "1":
        pytest.fail(f"{reason} (PIPEVISOR_REQUIRE_TOOLCHAINS=1: a missing toolchain is an error)")
    pytest.skip(reason)
