"""``python -m perf --compiled`` (perf/compiled.py): the call path still compiles with
mypyc as the code stands, loads compiled, and the host-bound cases run on it.

It takes the time of one mypyc build (about half a minute); the copy is cached by
content, so a second run in the same place is quick. Speed is not asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perf import compiled

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                       reason="no C compiler"),
]


def test_every_module_named_exists() -> None:
    for module in compiled.MODULES:
        assert (REPO / module).is_file(), module


def test_the_call_path_compiles_loads_compiled_and_runs(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    root = compiled.build()
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO}",
           compiled.ROOT_ENV: str(root)}
    loaded = subprocess.run(
        [sys.executable, "-c",
         "import json; from perf import compiled; print(json.dumps(compiled.compiled_modules()))"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert len(json.loads(loaded.stdout)) == len(compiled.MODULES)

    out = tmp_path / "run.json"
    run = subprocess.run(
        [sys.executable, "-m", "perf", "--compiled", "--quick", "--only", "host-bound",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["settings"]["compiled"]) == len(compiled.MODULES)
    many = {c["name"]: c for c in result["cases"]}["embedded-call-many-64-c-plugin"]
    assert many["status"] == "ok" and many["median"] > 0
