"""The Python SDK for plugin authors (see issue #6; not written yet)."""

from __future__ import annotations
