"""Fixtures for the CLI tests (real daemons, real plugins, real terminals): the same
short private socket folder as the daemon tests."""

from __future__ import annotations

from tests.daemon.conftest import sock_dir

__all__ = ["sock_dir"]
