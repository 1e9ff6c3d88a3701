"""Every MUST of protocol/SPEC.md has an id, and every id is cited by a test.

A test cites an id by writing it in brackets, ``[M-4.2a]``, in its name's
docstring or a comment next to its assertions. Ids listed in PENDING_HOST_SIDE
are requirements on the host whose test belongs in tests/supervisor (another
owner's files) and is not written yet; the list must shrink, never hide a
cited id or name one SPEC does not have.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "protocol" / "SPEC.md"
TESTS = ROOT / "tests"
ID = re.compile(r"\[(M-\d+(?:\.\d+)?[a-z])\]")

PENDING_HOST_SIDE: set[str] = set()
"""MUSTs of the host that no test cites yet (each host-side id is cited in
tests/supervisor/test_host_conformance.py or next to the test that checks it)."""


def spec_ids() -> list[str]:
    text = SPEC.read_text("utf-8").split("## 15. Changes", 1)[0]
    return ID.findall(text)


def cited_ids() -> dict[str, set[Path]]:
    cited: dict[str, set[Path]] = {}
    for path in TESTS.rglob("*.py"):
        if path.resolve() == Path(__file__).resolve():
            continue
        for ident in ID.findall(path.read_text("utf-8")):
            cited.setdefault(ident, set()).add(path)
    return cited


def test_every_must_in_spec_has_an_id() -> None:
    text = SPEC.read_text("utf-8").split("## 15. Changes", 1)[0]
    text = text.split("## 14.", 1)[0]  # the control socket: for clients, not the protocol
    paragraphs = re.split(r"\n\s*\n", text.split("### 1.1", 1)[1])
    bare = [p for p in paragraphs if re.search(r"\bMUST\b", p) and not ID.search(p)]
    assert bare == []


def test_each_id_is_stated_in_the_section_it_names() -> None:
    """[M-4.2a] may be repeated elsewhere (the 3.5 table), but it is stated in 4.2."""
    homes: dict[str, set[str]] = {}
    section = ""
    for line in SPEC.read_text("utf-8").split("## 15. Changes", 1)[0].splitlines():
        heading = re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line)
        if heading:
            section = heading.group(1)
        for ident in ID.findall(line):
            homes.setdefault(ident, set()).add(section)
    misplaced = {ident: sorted(found) for ident, found in homes.items()
                 if ident[2:-1] not in found}
    assert misplaced == {}
    assert len(homes) >= 50


def test_every_must_id_is_cited_by_a_test() -> None:
    cited = cited_ids()
    missing = sorted(set(spec_ids()) - set(cited) - PENDING_HOST_SIDE)
    assert missing == [], f"MUST ids no test cites: {missing}"


def test_the_pending_list_is_honest() -> None:
    """Pending ids exist in SPEC and are not cited yet: cite one, then drop it here."""
    ids = set(spec_ids())
    assert ids >= PENDING_HOST_SIDE, sorted(PENDING_HOST_SIDE - ids)
    cited = cited_ids()
    assert sorted(PENDING_HOST_SIDE & set(cited)) == []


def test_cited_ids_exist_in_spec() -> None:
    unknown = {ident: sorted(str(p.relative_to(ROOT)) for p in paths)
               for ident, paths in cited_ids().items() if ident not in set(spec_ids())}
    assert unknown == {}
