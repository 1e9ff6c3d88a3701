"""The wheels users install (issue 15): ``pipevisor`` and ``pipevisor-kit``, each with only
the ``pipevisor`` namespace at the top level and no file in common, one version, typed
packages, the package data the code opens at run time, and the license."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    """Both distributions built from this repository: ``pipevisor`` (the supervisor)
    and ``pipevisor-kit`` (protocol and kit, packaging/kit)."""
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the tracked files, so the build never writes into the checkout
    src = out.parent / "src"
    src.mkdir()
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
                           "--disable-pip-version-check", "-w", str(out), str(src),
                           str(src / "packaging" / "kit")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (main,) = out.glob("pipevisor-*.whl")
    (kit,) = out.glob("pipevisor_kit-*.whl")
    return {"pipevisor": zipfile.ZipFile(main), "pipevisor-kit": zipfile.ZipFile(kit)}


@pytest.fixture(scope="module")
def sdist(wheels: dict[str, zipfile.ZipFile], tmp_path_factory: pytest.TempPathFactory
          ) -> set[str]:
    """Names in the main sdist, built from the same copy of the tracked files."""
    src = Path(wheels["pipevisor"].filename).parent.parent / "src"  # type: ignore[arg-type]
    out = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist",
                           "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("pipevisor-*.tar.gz")
    with tarfile.open(built) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


@pytest.fixture(scope="module")
def wheel(wheels: dict[str, zipfile.ZipFile]) -> zipfile.ZipFile:
    return wheels["pipevisor"]


def _needs_a_loader(elf: bytes) -> bool:
    """Whether an ELF64 executable has a PT_INTERP program header (dynamic linking)."""
    import struct

    assert elf[:4] == b"\x7fELF" and elf[4] == 2, "not an ELF64 file"
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return any(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == 3
               for i in range(phnum))


def _metadata(wheel: zipfile.ZipFile) -> str:
    dist_info = next(n.split("/")[0] for n in wheel.namelist() if ".dist-info/" in n)
    return wheel.read(f"{dist_info}/METADATA").decode()


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["pipevisor", "pipevisor-kit"])
def test_each_wheel_installs_only_the_pipevisor_namespace(
        wheels: dict[str, zipfile.ZipFile], dist: str) -> None:
    names = wheels[dist].namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    assert top == {"pipevisor", dist_info}
    assert "pipevisor/__init__.py" not in names  # a PEP 420 namespace shared by both
    record = wheels[dist].read(f"{dist_info}/RECORD").decode()
    assert {line.split("/")[0] for line in record.splitlines() if line} == top


@pytest.mark.slow
def test_the_two_wheels_share_no_file_and_split_where_documented(
        wheels: dict[str, zipfile.ZipFile]) -> None:
    main = {n for n in wheels["pipevisor"].namelist() if n.startswith("pipevisor/")}
    kit = {n for n in wheels["pipevisor-kit"].namelist() if n.startswith("pipevisor/")}
    assert not main & kit
    assert {n.split("/")[1] for n in main} == {"supervisor"}
    assert {n.split("/")[1] for n in kit} == {"protocol", "kit"}


@pytest.mark.slow
def test_one_version_and_the_kit_pulls_in_no_daemon_dependency(
        wheels: dict[str, zipfile.ZipFile]) -> None:
    version = (ROOT / "VERSION").read_text().strip()
    main, kit = _metadata(wheels["pipevisor"]), _metadata(wheels["pipevisor-kit"])
    assert f"Version: {version}\n" in main and f"Version: {version}\n" in kit
    assert f"Requires-Dist: pipevisor-kit=={version}\n" in main
    kit_deps = {line.split(":", 1)[1].strip().split(">")[0].split("=")[0]
                for line in kit.splitlines() if line.startswith("Requires-Dist:")}
    assert kit_deps == {"orjson", "jsonschema"}


@pytest.mark.slow
def test_the_readme_links_work_on_an_index_page(wheel: zipfile.ZipFile) -> None:
    description = _metadata(wheel).split("\n\n", 1)[1]
    links = re.findall(r"\]\(([^)]+)\)", description)
    assert links and all(link.startswith(("https://", "#")) for link in links), links


@pytest.mark.slow
def test_the_wheels_carry_types_data_and_license(wheels: dict[str, zipfile.ZipFile]) -> None:
    main, kit = set(wheels["pipevisor"].namelist()), set(wheels["pipevisor-kit"].namelist())
    assert "pipevisor/supervisor/py.typed" in main
    assert {"pipevisor/protocol/py.typed", "pipevisor/kit/py.typed"} <= kit
    assert "pipevisor/protocol/SPEC.md" in kit
    assert "pipevisor/supervisor/proc/native/pvinit.c" in main
    assert any(n.startswith("pipevisor/protocol/schemas/") and n.endswith(".json")
               for n in kit)
    for wheel in wheels.values():
        names = wheel.namelist()
        dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
        assert f"{dist_info}/licenses/LICENSE" in names
        metadata = _metadata(wheel)
        assert "License-Expression: MIT" in metadata
        assert "Classifier: Typing :: Typed" in metadata


@pytest.mark.slow
def test_the_wheel_carries_a_built_shim_used_without_a_compiler(
        wheels: dict[str, zipfile.ZipFile], tmp_path: Path) -> None:
    """The shim is built with the package: the wheel is tagged for this platform, and
    an installed copy uses its own pvinit with no compiler on PATH and an empty cache."""
    import site

    if not sys.platform.startswith("linux"):
        pytest.skip("pvinit is Linux-only")
    wheel = wheels["pipevisor"]
    name = os.path.basename(wheel.filename or "")
    assert "-py3-none-" in name and not name.endswith("-any.whl"), name  # any Python 3
    if "manylinux" in name:  # only when the shim is static: no libc version to need
        assert not _needs_a_loader(wheel.read("pipevisor/supervisor/proc/native/pvinit"))
    names = set(wheel.namelist())
    assert {"pipevisor/supervisor/proc/native/pvinit",
            "pipevisor/supervisor/proc/native/pvinit.sha256"} <= names
    installed = tmp_path / "site"
    wheel.extractall(installed)
    wheels["pipevisor-kit"].extractall(installed)
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


@pytest.mark.slow
def test_the_sdist_carries_tests_docs_spec_and_both_sources(sdist: set[str]) -> None:
    assert {"protocol/SPEC.md", "CHANGELOG.md", "VERSION", "LICENSE", "setup.py",
            "packaging/kit/pyproject.toml", "supervisor/proc/native/pvinit.c",
            "plugin_kit/plugin.py", "tests/conftest.py", "docs/architecture.md",
            "scripts/test"} <= sdist
    assert "supervisor/proc/native/pvinit" not in sdist  # built by the installer
    assert not [name for name in sdist if "__pycache__" in name]
