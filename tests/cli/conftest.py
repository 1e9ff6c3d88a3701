"""Fixtures for the CLI tests (real daemons, real plugins, real terminals)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short private directory (0700) for the daemon's socket, config and state: Unix
    socket paths are limited to ~107 bytes and pytest's tmp_path is long."""
    d = tempfile.mkdtemp(prefix="pvcli-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
