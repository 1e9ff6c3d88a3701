"""Everything pipevisor installs lives under the ``pipevisor`` namespace (issues 15, 18),
split over two distributions built from this repository: ``pipevisor`` (supervisor/,
pyproject.toml) and ``pipevisor-kit`` (protocol/ and plugin_kit/, packaging/kit). Each
folder is mapped exactly once, every sub-package is listed, and the checkout's
pipevisor/ symlinks (read by mypy) point at the same folders."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = {"pipevisor": ROOT, "pipevisor-kit": ROOT / "packaging" / "kit"}


def _setuptools(project: Path) -> dict[str, Any]:
    data = tomllib.loads((project / "pyproject.toml").read_text("utf-8"))
    table: dict[str, Any] = data["tool"]["setuptools"]
    return table


@pytest.mark.parametrize("dist", PROJECTS)
def test_every_package_folder_is_listed_and_under_the_namespace(dist: str) -> None:
    project = PROJECTS[dist]
    setuptools = _setuptools(project)
    listed = set(setuptools["packages"])
    wanted = set()
    for name, folder in setuptools["package-dir"].items():
        assert name.startswith("pipevisor."), name
        for init in (project / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(project / folder).parts
            wanted.add(".".join((name, *rel)))
    assert wanted == listed, sorted(wanted ^ listed)
    assert not (ROOT / "pipevisor" / "__init__.py").exists()  # PEP 420: no owner


def test_each_folder_belongs_to_exactly_one_distribution() -> None:
    owners: dict[Path, str] = {}
    for dist, project in PROJECTS.items():
        for folder in _setuptools(project)["package-dir"].values():
            real = (project / folder).resolve()
            assert real not in owners, f"{real} is in {owners.get(real)} and {dist}"
            owners[real] = dist
    assert {p.relative_to(ROOT).as_posix() for p in owners} == {
        "supervisor", "protocol", "plugin_kit"}


def test_the_symlinks_mypy_reads_match_the_mapping() -> None:
    for project in PROJECTS.values():
        for name, folder in _setuptools(project)["package-dir"].items():
            link = ROOT / Path(*name.split("."))
            assert link.resolve() == (project / folder).resolve(), name


def test_one_version_file_for_both() -> None:
    version = (ROOT / "VERSION").read_text().strip()
    assert (PROJECTS["pipevisor-kit"] / "VERSION").resolve() == (ROOT / "VERSION").resolve()
    assert version.count(".") == 2 and all(part.isdigit() for part in version.split("."))
