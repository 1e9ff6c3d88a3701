"""docs/man/ holds a man page per click command (scripts/gen-man): they must be what the
generator makes of the commands today, and must render without a warning."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.docs.doc_blocks import ROOT

MAN_DIR = ROOT / "docs" / "man"


def _gen_man() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_man", ROOT / "scripts" / "gen_man.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_man_pages_are_up_to_date() -> None:
    stale = _gen_man().stale(MAN_DIR)
    assert not stale, (f"docs/man/ is stale ({', '.join(stale)}): run scripts/gen-man "
                       "and commit docs/man/")


def test_every_command_has_a_page() -> None:
    from pipevisor.supervisor.cli.main import main

    names = {p.name for p in MAN_DIR.glob("*.1")}
    assert "pipevisor.1" in names
    for command in main.commands.values():
        if not command.hidden:
            assert f"pipevisor-{command.name}.1" in names


def test_gen_man_check_flags_a_stale_page(tmp_path: Path) -> None:
    for page in MAN_DIR.glob("*.1"):
        shutil.copy(page, tmp_path / page.name)
    (tmp_path / "pipevisor-run.1").write_text(".TH OLD 1\n")
    (tmp_path / "pipevisor-gone.1").write_text(".TH GONE 1\n")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_man.py"), "--check",
                             "--out", str(tmp_path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1
    assert "pipevisor-run.1 is stale" in result.stderr
    assert "pipevisor-gone.1 is stale" in result.stderr


@pytest.mark.parametrize("page", sorted(p.name for p in MAN_DIR.glob("*.1")))
def test_man_page_renders(page: str) -> None:
    path = MAN_DIR / page
    if shutil.which("groff"):
        # -ww: every warning; -z: no output, only the diagnostics
        result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    if shutil.which("man") is None:
        if not shutil.which("groff"):
            pytest.skip("neither man nor groff is installed")
        return
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}
    result = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr
    name = page.removesuffix(".1")
    assert name.upper() in result.stdout and "SYNOPSIS" in result.stdout, result.stdout
    assert "\\f" not in result.stdout and "``" not in result.stdout, result.stdout
