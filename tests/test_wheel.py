"""The wheel users install (issue 15): only the ``pipevisor`` namespace at the top level,
typed packages, the package data the code opens at run time, and the license."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the tracked files, so the build never writes into the checkout
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source, target = ROOT / name, src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        elif source.is_file():
            target.write_bytes(source.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "--disable-pip-version-check", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("pipevisor-*.whl")
    return zipfile.ZipFile(built)


@pytest.mark.slow
def test_the_wheel_installs_only_the_pipevisor_namespace(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    assert top == {"pipevisor", dist_info}
    assert "pipevisor/__init__.py" not in names  # a PEP 420 namespace: the kit may join it
    record = wheel.read(f"{dist_info}/RECORD").decode()
    assert {line.split("/")[0] for line in record.splitlines() if line} == top


@pytest.mark.slow
def test_the_wheel_carries_types_data_and_license(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in ("supervisor", "protocol", "kit"):
        assert f"pipevisor/{package}/py.typed" in names
    assert "pipevisor/protocol/SPEC.md" in names
    assert "pipevisor/supervisor/proc/native/pvinit.c" in names
    assert any(n.startswith("pipevisor/protocol/schemas/") and n.endswith(".json")
               for n in names)
    dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert "Classifier: Typing :: Typed" in metadata


@pytest.mark.slow
def test_the_wheel_carries_a_built_shim_used_without_a_compiler(
        wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    """The shim is built with the package: the wheel is tagged for this platform, and
    an installed copy uses its own pvinit with no compiler on PATH and an empty cache."""
    import site

    if not sys.platform.startswith("linux"):
        pytest.skip("pvinit is Linux-only")
    assert not wheel.filename.endswith("-none-any.whl")  # type: ignore[union-attr]
    names = set(wheel.namelist())
    assert {"pipevisor/supervisor/proc/native/pvinit",
            "pipevisor/supervisor/proc/native/pvinit.sha256"} <= names
    installed = tmp_path / "site"
    wheel.extractall(installed)
    (installed / "pipevisor/supervisor/proc/native/pvinit").chmod(0o755)  # zip keeps no mode
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path),
           "PIPEVISOR_CACHE_DIR": str(tmp_path / "cache"),
           # -S: no .pth files, so the checkout's editable install is not in the way
           "PYTHONPATH": os.pathsep.join([str(installed), *site.getsitepackages()])}
    probe = ("from pipevisor.supervisor.proc import containment as _platform;"
             " c = _platform.detect_containment();"
             " print(_platform.ensure_shim()); print(c.mechanism)")
    probe += "; print(_platform.__file__)"
    proc = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # not the checkout's pipevisor/
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1].startswith(str(installed))
    assert proc.returncode == 0, proc.stderr
    shim, mechanism, _ = proc.stdout.split()
    assert shim == str(installed / "pipevisor/supervisor/proc/native/pvinit"), proc.stderr
    assert mechanism != "session", proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing compiled at run time
