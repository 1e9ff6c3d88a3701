"""Fixtures of the example tests: each compiled example is built once per session."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.examples.toolchains import BUILD, EXAMPLES, Example, missing_toolchain, unavailable


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Example], Path]:
    """The example's executable, built at most once per session."""
    built: dict[str, Path] = {}
    out = tmp_path_factory.mktemp("examples")

    def get(example: Example) -> Path:
        reason = missing_toolchain(example)
        if reason is not None:
            unavailable(f"{example.lang} example: {reason}")
        if not example.compiled:
            return EXAMPLES / example.executable
        if example.lang not in built:
            result = subprocess.run([str(BUILD), "--out", str(out), example.lang],
                                    capture_output=True, text=True, check=False, timeout=300)
            assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
            built[example.lang] = out / Path(example.executable).name
        return built[example.lang]

    return get
