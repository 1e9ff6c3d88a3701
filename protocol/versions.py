"""``MAJOR.MINOR`` versions, inclusive ranges of them, and the negotiation rule.

Versions are compared as integer pairs, never as strings ("1.10" > "1.9").
"""

from __future__ import annotations

from dataclasses import dataclass

from pipevisor.protocol.constants import parse_version_pair
from pipevisor.protocol.errors import VersionError


@dataclass(frozen=True, slots=True, order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: object) -> Version:
        try:
            major, minor = parse_version_pair(text)  # the one parser, shared with the kit
        except ValueError as exc:
            raise VersionError(str(exc)) from None
        return cls(major, minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True, slots=True)
class VersionRange:
    """Every version from ``min`` to ``max`` inclusive."""

    min: Version
    max: Version

    def __post_init__(self) -> None:
        if self.min > self.max:
            raise VersionError(f"empty version range {self.min}..{self.max}")

    @classmethod
    def parse(cls, obj: object) -> VersionRange:
        """From ``{"min": "1.0", "max": "1.3"}`` or a single version string."""
        if isinstance(obj, str):
            v = Version.parse(obj)
            return cls(v, v)
        if isinstance(obj, dict) and set(obj) == {"min", "max"}:
            return cls(Version.parse(obj["min"]), Version.parse(obj["max"]))
        raise VersionError(f'not a version range (want {{"min": "X.Y", "max": "X.Y"}}): {obj!r}')

    def __contains__(self, version: object) -> bool:
        return isinstance(version, Version) and self.min <= version <= self.max

    def __str__(self) -> str:
        return str(self.min) if self.min == self.max else f"{self.min}..{self.max}"

    def to_json(self) -> dict[str, str]:
        return {"min": str(self.min), "max": str(self.max)}


def negotiate(ours: VersionRange, theirs: VersionRange) -> Version:
    """The highest version in both ranges.

    Raises:
        VersionError: naming both ranges when they do not overlap.
    """
    low = max(ours.min, theirs.min)
    high = min(ours.max, theirs.max)
    if low > high:
        raise VersionError(f"no common protocol version: we speak {ours}, the peer speaks {theirs}")
    return high
