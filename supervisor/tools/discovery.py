"""Find plugin executables by name prefix, the way cargo and kubectl find subcommands.

A plugin called ``echo`` is an executable file named ``pipevisor-echo`` in one
of the searched folders. Discovery only looks at the file system: nothing is
run, no shell is involved, so listing plugins is safe even on a hostile PATH.

Search order (first match of a name wins, later ones are reported as shadowed):

1. the extra folders of :class:`DiscoveryConfig` (``dirs``), in the order given,
   because a folder named explicitly is a deliberate choice that should beat
   whatever happens to be on PATH;
2. the entries of ``PATH``, in order, each real folder visited once.

Candidates are skipped, with a warning saying why, when they could not be run
or could be run as something other than what the user installed:

* empty and relative PATH entries (they mean "the current directory", so the
  result would depend on where the command was started);
* folders that anyone may write to, sticky bit or not: the sticky bit only
  stops others deleting files, it does not stop them planting a new
  ``pipevisor-x`` there;
* directories, broken symbolic links, files that are not regular files,
  files that are not executable by us, files anyone may write to;
* files and folders that fail the trust rule of :mod:`pipevisor.supervisor.proc.trust`
  (the real file and every folder above it owned by root or us, not writable by
  their group or by others): a plugin of another user's, one in a group-writable
  folder, or a symbolic link into someone else's files would run as the daemon;
* names (the part after the prefix) that are not valid plugin names
  (:data:`pipevisor.supervisor.engine.config.NAME_RE`), because the supervisor could not
  configure them anyway.

Folders on PATH that do not exist are ignored silently (every PATH has some);
missing or unreadable folders named in ``dirs`` are warned about.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipevisor.supervisor.engine.config import NAME_RE
from pipevisor.supervisor.proc.trust import TrustRule, check_trusted

DEFAULT_PREFIX = "pipevisor-"


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where to look and which file names count as plugins."""

    prefix: str = DEFAULT_PREFIX
    use_path: bool = True
    dirs: tuple[str, ...] = ()
    """Extra plugin folders, searched before PATH."""
    trust: TrustRule | None = None
    """Who may own and write plugin files and the folders above them
    (:mod:`pipevisor.supervisor.proc.trust`; None: root and this process's uid)."""

    def __post_init__(self) -> None:
        if not self.prefix or os.sep in self.prefix:
            raise ValueError("discovery prefix must be a non-empty file name part, "
                             f"got {self.prefix!r}")


@dataclass(frozen=True)
class FoundPlugin:
    name: str
    """What follows the prefix in the file name; the plugin's name."""
    path: str
    """Absolute path of the executable (not resolved through symlinks)."""


@dataclass(frozen=True)
class Shadowed:
    """A plugin file hidden by an earlier one with the same name."""

    name: str
    path: str
    shadowed_by: str


@dataclass(frozen=True)
class Skipped:
    """A folder or candidate file that was not used, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class DiscoveryResult:
    found: tuple[FoundPlugin, ...]
    shadowed: tuple[Shadowed, ...]
    warnings: tuple[Skipped, ...]

    def by_name(self) -> dict[str, FoundPlugin]:
        return {p.name: p for p in self.found}

    def to_json(self) -> dict[str, Any]:
        return {
            "found": [{"name": p.name, "path": p.path} for p in self.found],
            "shadowed": [{"name": s.name, "path": s.path, "shadowed_by": s.shadowed_by}
                         for s in self.shadowed],
            "warnings": [{"path": w.path, "reason": w.reason} for w in self.warnings],
        }


def discover(config: DiscoveryConfig = DiscoveryConfig(),
             path: str | None = None) -> DiscoveryResult:
    """Search ``config.dirs`` then ``path`` (default: ``$PATH``) for plugin executables."""
    if path is None:
        path = os.environ.get("PATH", "")
    found: dict[str, FoundPlugin] = {}
    shadowed: list[Shadowed] = []
    warnings: list[Skipped] = []
    for folder in _folders(config, path, warnings):
        for name, file_path in _candidates(folder, config.prefix, warnings, config.trust):
            first = found.get(name)
            if first is not None:
                shadowed.append(Shadowed(name, file_path, first.path))
            else:
                found[name] = FoundPlugin(name, file_path)
    return DiscoveryResult(tuple(found.values()), tuple(shadowed), tuple(warnings))


def _folders(config: DiscoveryConfig, path: str, warnings: list[Skipped]) -> Iterator[str]:
    """Usable folders in search order, each real folder once."""
    seen: set[str] = set()
    entries: list[tuple[str, bool]] = [(d, True) for d in config.dirs]
    if config.use_path:
        entries += [(e, False) for e in path.split(os.pathsep)]
    for entry, explicit in entries:
        where = "plugin folder" if explicit else "PATH entry"
        if not entry.strip():
            if not explicit and path.strip():
                warnings.append(Skipped(entry, f"empty {where} "
                                               "(it would mean the current directory)"))
            continue
        if not os.path.isabs(entry):
            if explicit:
                entry = os.path.abspath(entry)  # given on the command line: relative to cwd
            else:
                warnings.append(Skipped(entry, f"relative {where}: the result would depend on "
                                               "the current directory"))
                continue
        try:
            st = os.stat(entry)
        except FileNotFoundError:
            if explicit:
                warnings.append(Skipped(entry, f"{where} does not exist"))
            continue
        except OSError as exc:
            warnings.append(Skipped(entry, f"cannot read {where}: {exc.strerror}"))
            continue
        if not stat.S_ISDIR(st.st_mode):
            if explicit:
                warnings.append(Skipped(entry, f"{where} is not a directory"))
            continue
        real = os.path.realpath(entry)
        if real in seen:
            continue
        seen.add(real)
        if st.st_mode & stat.S_IWOTH:
            warnings.append(Skipped(entry, f"{where} is world-writable (mode "
                                           f"{stat.S_IMODE(st.st_mode):o}): anyone could plant a "
                                           "plugin there; not searched"))
            continue
        why = check_trusted(entry, config.trust)
        if why is not None:
            warnings.append(Skipped(entry, f"{where} is not trusted ({why}); not searched"))
            continue
        yield entry


def _candidates(folder: str, prefix: str, warnings: list[Skipped],
                trust: TrustRule | None) -> Iterator[tuple[str, str]]:
    """(name, absolute path) of the usable plugin files in one folder, sorted by file name."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith(prefix))
    except OSError as exc:
        warnings.append(Skipped(folder, f"cannot list folder: {exc.strerror}"))
        return
    for file_name in names:
        file_path = os.path.join(folder, file_name)
        name = file_name[len(prefix):]
        reason = _unusable(file_path, name, trust)
        if reason is not None:
            warnings.append(Skipped(file_path, reason))
        else:
            yield name, file_path


def _unusable(file_path: str, name: str, trust: TrustRule | None = None) -> str | None:
    """Why this candidate cannot be used as a plugin, or None if it can."""
    if not NAME_RE.fullmatch(name):
        return (f"{name!r} is not a valid plugin name (1-64 of A-Z a-z 0-9 _ . -, "
                "starting with a letter or digit)")
    try:
        st = os.stat(file_path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(file_path) else "vanished while listing"
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(file_path, os.X_OK):
        return f"not executable (mode {stat.S_IMODE(st.st_mode):o}); chmod +x it to use it"
    if st.st_mode & stat.S_IWOTH:
        return (f"world-writable (mode {stat.S_IMODE(st.st_mode):o}): anyone could replace it; "
                "chmod o-w it to use it")
    why = check_trusted(file_path, trust)
    if why is not None:
        return f"not trusted: {why}"
    return None
