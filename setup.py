"""Build step of the package: compile the pvinit shim into the wheel.

pyproject.toml holds every piece of metadata; this file only adds what setuptools
cannot declare: the C shim built as an *executable* (not an extension module) with the
build machine's compiler, placed next to its source as
``pipevisor/supervisor/proc/native/pvinit`` with ``pvinit.sha256`` naming the source and
flags it was built from. At run time pipevisor uses that binary and compiles nothing;
without it (a build with no compiler, a non-Linux system) it falls back as documented
in docs/process-containment.md. The wheel is then platform-specific.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
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
        proc = subprocess.run([compiler, *CFLAGS, "-o", str(target), str(SOURCE)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            self.warn(f"compiling pvinit failed, the wheel has no shim: {proc.stderr[-500:]}")
            return
        target.chmod(0o755)
        (target_dir / "pvinit.sha256").write_text(shim_digest(SOURCE.read_bytes()) + "\n")


class BinaryDistribution(Distribution):
    """The wheel carries a compiled executable: tag it for this platform."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildPyWithShim}, distclass=BinaryDistribution)
