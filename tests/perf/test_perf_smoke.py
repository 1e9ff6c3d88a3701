"""Smoke test for ``python -m perf --quick``: the harness runs, never how fast.

Speed is measured, never asserted, so this only checks that every baseline
produced a positive median in the same run and that ratios are anchored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASELINES = {
    "raw-python-pipe",
    "c-pipe",
    "c-pipe-c2c",
    "spawn-per-call",
    "raw-python-pipe-pipelined",
}
NEEDS_CC = {"c-pipe", "c-pipe-c2c"}


def test_quick_run_reports_every_baseline(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "perf", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 20, f"--quick took {elapsed:.1f}s; it must stay a smoke run"

    data = json.loads(out.read_text())
    assert data["mode"] == "quick"
    assert data["machine"]["cpu_count"] >= 1
    # The harness scans its own descendants at exit and kills stragglers; a
    # non-empty list means some case leaked a process.
    assert data["leftover_children"] == []
    rows = {row["name"]: row for row in data["cases"]}
    assert set(rows) >= BASELINES

    have_cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    for name in BASELINES:
        row = rows[name]
        if name in NEEDS_CC and not have_cc:
            assert row["status"] == "skipped", row
            continue
        assert row["status"] == "ok", row
        assert row["median"] > 0, row
        assert row["p90"] > 0, row
        assert row["ratio"] is not None, row

    for anchor in ("raw-python-pipe", "raw-python-pipe-pipelined"):
        assert rows[anchor]["baseline"] == anchor
        assert rows[anchor]["ratio"] == 1.0
