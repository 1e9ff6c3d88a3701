"""Whether a file may be executed (or read as configuration) by the supervisor: one
rule for discovered plugins, ``load PATH``, a config's ``path`` and the pvinit shim.

A file is trusted when it, and every folder above it up to ``/``, is owned by root or
by a trusted uid (the supervisor's own by default) and cannot be changed by anyone
else: not writable by "other", nor by its group unless that group is trusted
explicitly. A folder others may write is accepted only with the sticky bit set and
when the entry below it belongs to a trusted uid (``/tmp/<ours>/...``): in a sticky
folder nobody but an entry's owner can rename or delete it. Symlinks are followed and
the real path is what gets checked, so a link into another user's file is refused.

This is the rule OpenSSH applies to authorized_keys and its home folder, with the
sticky-folder exception that systemd's tmpfiles make common.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["TrustRule", "UntrustedPath", "check_trusted", "require_trusted"]


class UntrustedPath(Exception):
    """The path fails the trust rule; the message names the component and why."""


@dataclass(frozen=True)
class TrustRule:
    uids: frozenset[int]
    """Owners besides root whose files are trusted (the supervisor's euid by default)."""
    group: int | None = None
    """A gid whose write permission is accepted too (``trusted_group`` in the config)."""

    @classmethod
    def default(cls, *, group: int | None = None,
                extra_uids: Iterable[int] = ()) -> TrustRule:
        return cls(frozenset({0, os.geteuid(), *extra_uids}), group)


def _owner_ok(st: os.stat_result, rule: TrustRule) -> bool:
    return st.st_uid == 0 or st.st_uid in rule.uids


def _why_writable(st: os.stat_result, rule: TrustRule) -> str | None:
    mode = st.st_mode
    if mode & stat.S_IWOTH:
        return "writable by every user"
    if mode & stat.S_IWGRP and st.st_gid != rule.group:
        return f"writable by its group (gid {st.st_gid})"
    return None


def check_trusted(path: str | os.PathLike[str], rule: TrustRule | None = None) -> str | None:
    """None when ``path`` is trusted, else why not (one line, naming the component)."""
    rule = rule or TrustRule.default()
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        return f"{os.fspath(path)}: {exc.strerror or exc}"
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"{real}: {exc.strerror or exc}"
    if not _owner_ok(st, rule):
        return f"{real} is owned by uid {st.st_uid}, not by root or uid {os.geteuid()}"
    why = _why_writable(st, rule)
    if why is not None:
        return f"{real} is {why}"
    child = real
    folder = os.path.dirname(real)
    while True:
        try:
            dst = os.stat(folder)
        except OSError as exc:
            return f"{folder}: {exc.strerror or exc}"
        if not _owner_ok(dst, rule):
            return (f"folder {folder} (above {child}) is owned by uid {dst.st_uid}, "
                    f"not by root or uid {os.geteuid()}")
        why = _why_writable(dst, rule)
        # sticky: only an entry's owner (trusted, checked one step earlier) can move it
        if why is not None and not dst.st_mode & stat.S_ISVTX:
            return f"folder {folder} (above {child}) is {why}"
        if folder == "/":
            return None
        child = folder
        folder = os.path.dirname(folder)


def require_trusted(path: str | os.PathLike[str], rule: TrustRule | None = None) -> str:
    """The real path of ``path``, or :class:`UntrustedPath` saying why it is refused."""
    why = check_trusted(path, rule)
    if why is not None:
        raise UntrustedPath(why)
    return os.path.realpath(path)
