"""Everything pipevisor installs lives under the ``pipevisor`` namespace (issues 15, 18):
the folders supervisor/, protocol/, plugin_kit/ are mapped by pyproject.toml, and the
checkout's pipevisor/ symlinks (read by mypy) point at the same folders."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]


def test_every_package_folder_is_listed_and_under_the_namespace() -> None:
    listed = set(SETUPTOOLS["packages"])
    wanted = set()
    for name, folder in SETUPTOOLS["package-dir"].items():
        assert name.startswith("pipevisor."), name
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            wanted.add(".".join((name, *rel)))
    assert wanted == listed, sorted(wanted ^ listed)
    assert not (ROOT / "pipevisor" / "__init__.py").exists()  # PEP 420: no owner


def test_the_symlinks_mypy_reads_match_the_mapping() -> None:
    for name, folder in SETUPTOOLS["package-dir"].items():
        link = ROOT / Path(*name.split("."))
        assert link.resolve() == (ROOT / folder).resolve(), name
