"""Smoke test for ``python -m perf --quick``: the harness runs, never how fast.

Speed is measured, never asserted, so this only checks that every case ran
(or, without a C compiler, was skipped), that every baseline produced a
positive median in the same run, and that ratios are anchored.
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
# One case of every group of issue #8, so a group cannot silently disappear.
REQUIRED = {
    "asyncio-pipe",
    "embedded-seq-stdlib",
    "embedded-pipelined-1",
    "embedded-pipelined-16",
    "embedded-pipelined-256",
    "embedded-pipelined-8-plugins",
    "control-seq-stdlib",
    "control-pipelined-256",
    "restart-after-sigkill",
    "restart-crash-loop-overhead",
    "scale-idle-1000-start",
    "scale-idle-1000-rss",
    "scale-idle-1000-cpu",
    "embedded-seq-validated",
    "embedded-seq-1MiB",
}


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

    assert set(rows) >= REQUIRED, sorted(REQUIRED - set(rows))
    for name, row in rows.items():
        # A crashed case turns the run red above; this names it. Only the C
        # cases may be skipped, and only without a compiler.
        if row["status"] == "skipped":
            no_kit = name == "embedded-seq-kit" and "not there" in row["reason"]
            assert no_kit or (not have_cc and (name in NEEDS_CC or name.startswith("scale-"))), row
        else:
            assert row["status"] == "ok", row
            assert row["n_samples"] >= 1, row

    for anchor in ("raw-python-pipe", "raw-python-pipe-pipelined"):
        assert rows[anchor]["baseline"] == anchor
        assert rows[anchor]["ratio"] == 1.0
