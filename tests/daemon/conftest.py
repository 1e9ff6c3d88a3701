"""Fixtures shared by the daemon, control socket and CLI tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short private directory (mkdtemp: 0700) for sockets, configs and logs: Unix
    socket paths are limited to ~107 bytes and pytest's tmp_path is long."""
    d = tempfile.mkdtemp(prefix="pvc-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
