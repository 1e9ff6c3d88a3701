"""perf/profile_calls.py, the profile behind perf/README.md's "Why 64 in flight stays
under plain asyncio", still runs: a tiny load through cProfile, and the py-spy output
parser on a hand-made sample."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perf.profile_calls import _shares_from_pyspy

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
def test_a_small_load_runs_and_reports_cpu_per_call() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "perf.profile_calls", "--cprofile", "--calls", "300",
         "--depth", "4", "--top", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "cProfile (asked for)" in out
    assert "calls/s, host CPU" in out and "(300 calls, 4 in flight)" in out
    assert "Ordered by: internal time" in out


def test_pyspy_shares_count_only_the_loops_steady_state(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "run (a.py:1);BaseEventLoop._run_once (b.py:2);Connection.call (c.py:3) 30\n"
        "run (a.py:1);BaseEventLoop._run_once (b.py:2);Connection.call (c.py:9) 10\n"
        "run (a.py:1);BaseEventLoop._run_once (b.py:2);Peer._handle_line (p.py:4) 60\n"
        "<module> (x.py:1);_find_and_load (<frozen importlib._bootstrap>:1) 500\n"
        "run (a.py:1);BaseEventLoop._run_once (b.py:2);Supervisor.wait_ready (s.py:5) 400\n")
    shares = _shares_from_pyspy(raw, 10)
    assert shares == [(60.0, "Peer._handle_line (p.py)"), (40.0, "Connection.call (c.py)")]
