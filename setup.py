"""Build step of the package: compile the pvinit shim into the wheel, and the three
fields pyproject.toml marks dynamic.

pyproject.toml holds the rest of the metadata. This file adds what setuptools cannot
declare statically: the version from the VERSION file pipevisor-kit shares, a
dependency on pipevisor-kit at exactly that version, README.md with its relative links
made absolute (they would break on a package index page), and the C shim built as an
*executable* (not an extension module) with the
build machine's compiler, placed next to its source as
``pipevisor/supervisor/proc/native/pvinit`` with ``pvinit.sha256`` naming the source and
flags it was built from. At run time pipevisor uses that binary and compiles nothing;
without it (a build with no compiler, a non-Linux system) it falls back as documented
in docs/process-containment.md. The wheel is then platform-specific.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

# the same flags the run-time fallback uses (supervisor/proc/containment.py, _CFLAGS)
CFLAGS = ("-O2", "-Wall", "-Werror")
SOURCE = Path("supervisor") / "proc" / "native" / "pvinit.c"


def shim_digest(source: bytes) -> str:
    return hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]


class BuildPyWithShim(build_py):
    def run(self) -> None:
        super().run()
        if not sys.platform.startswith("linux") or os.environ.get("PIPEVISOR_BUILD_SHIM") == "0":
            return
        compiler = os.environ.get("CC") or next(
            (c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
        target_dir = Path(self.build_lib) / "pipevisor" / "supervisor" / "proc" / "native"
        if compiler is None:
            self.warn("no C compiler: the wheel has no pvinit shim (pipevisor falls back to "
                      "'session' containment; docs/process-containment.md)")
            return
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / "pvinit"
        # static first: no libc version to depend on, so the wheel can say manylinux
        # (BdistWheel below); a build machine without a static libc links dynamically
        proc = subprocess.run([compiler, *CFLAGS, "-static", "-s", "-o", str(target),
                               str(SOURCE)], capture_output=True, text=True, check=False)
        SHIM["static"] = proc.returncode == 0
        if proc.returncode != 0:
            proc = subprocess.run([compiler, *CFLAGS, "-o", str(target), str(SOURCE)],
                                  capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            self.warn(f"compiling pvinit failed, the wheel has no shim: {proc.stderr[-500:]}")
            return
        target.chmod(0o755)
        (target_dir / "pvinit.sha256").write_text(shim_digest(SOURCE.read_bytes()) + "\n")


SHIM: dict[str, bool] = {"static": False}
"""How the build linked pvinit (set by BuildPyWithShim, read by BdistWheel)."""


class BdistWheel(bdist_wheel):
    """The wheel holds no extension module, only the shim executable: it fits every
    Python 3 (py3-none), on this platform. A statically linked shim depends on no libc
    version, so on Linux the wheel is tagged manylinux2014 (glibc 2.17, what the
    kernel interfaces pvinit uses predate) and may go to a package index as is."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, plat = super().get_tag()
        if plat.startswith("linux_") and SHIM["static"]:
            arch = plat.removeprefix("linux_")
            plat = f"manylinux_2_17_{arch}.manylinux2014_{arch}"
        return "py3", "none", plat


class BinaryDistribution(Distribution):
    """The wheel carries a compiled executable: tag it for this platform."""

    def has_ext_modules(self) -> bool:
        return True


HERE = Path(__file__).resolve().parent
REPOSITORY = "https://github.com/pipevisor/pipevisor/blob/main/"
VERSION = (HERE / "VERSION").read_text().strip()
DEPENDENCIES = [
    f"pipevisor-kit=={VERSION}",  # pipevisor.protocol and pipevisor.kit
    "anyio>=4.4",
    "orjson>=3.8",
    "jsonschema>=4.18",
    "click>=8.1",
    "psutil>=5.9",
]


def readme_for_index() -> str:
    """README.md with ``](relative)`` links pointing at the repository."""
    text = (HERE / "README.md").read_text()
    return re.sub(r"\]\((?!https?:|#|mailto:)([^)]+)\)",
                  lambda m: f"]({REPOSITORY}{m.group(1)})", text)


setup(
    version=VERSION,
    install_requires=DEPENDENCIES,
    long_description=readme_for_index(),
    long_description_content_type="text/markdown",
    cmdclass={"build_py": BuildPyWithShim, "bdist_wheel": BdistWheel},
    distclass=BinaryDistribution,
)
