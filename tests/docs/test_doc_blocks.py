"""The docs' shell examples, run against a real ``pipevisor run`` (issue #19): the
tutorial block by block, the README's second-terminal tour and docs/cli.md's examples
against the demo configuration. The convention is in tests/docs/doc_blocks.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.doc_blocks import (
    ROOT,
    Block,
    DocTestError,
    Session,
    blocks,
    run_page,
    run_shell,
    session,
    shell_commands,
)
from tests.examples.toolchains import unavailable


@pytest.fixture
def work() -> Iterator[Path]:
    """A short private folder (0700): the daemon's socket lives below it, and Unix socket
    paths are limited to ~107 bytes."""
    d = tempfile.mkdtemp(prefix="pvdoc-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_tutorial_runs_as_written(work: Path) -> None:
    if shutil.which("node") is None:
        unavailable("the tutorial's second plugin needs node: apt-get install nodejs")
    page = (ROOT / "docs" / "tutorial.md").read_text()
    with session(work) as s:
        try:
            run_page(s, page)
        except DocTestError as exc:
            raise AssertionError(f"docs/tutorial.md {exc}\n{s.daemon_logs()}") from None


def _block(page: str, first_line: str) -> Block:
    """The ``sh`` block of ``page`` that holds ``first_line`` (pages not written for the
    test carry no markers: the block is found by what it says)."""
    text = (ROOT / page).read_text()
    found = [b for b in blocks(text) if b.lang == "sh" and first_line in b.text]
    assert len(found) == 1, f"{page}: no single sh block with {first_line!r}: the page changed?"
    return found[0]


README_TOUR = "pipevisor status                          # every plugin"
CLI_EXAMPLES = "echo '{\"a\": 1, \"b\": 2}' | pipevisor call calc add -"
# Not run, on purpose: README.md's first blocks (they install packages, run the whole
# test suite, or start the daemon scripts/demo starts, which this test starts itself)
# and cli.md's completion block (it writes into $HOME).


def test_readme_tour_and_cli_examples_run(work: Path) -> None:
    """The README's "in a second terminal" block and docs/cli.md's "Examples" block,
    against the daemon scripts/demo starts (the configuration file and the Python, Node and
    Bash example folders on PATH; the compiled ones are left out to keep this short), plus
    a ``calc`` plugin, the name cli.md's example calls."""
    if shutil.which("jq") is None:
        unavailable("docs/cli.md's examples pipe into jq: apt-get install jq")
    config = work / "demo.toml"
    echo = ROOT / "examples" / "python-stdlib" / "pipevisor-echo"
    config.write_text((ROOT / "scripts" / "demo.toml").read_text()
                      + f'\n[plugins.calc]\ncommand = ["{echo}"]\n')
    dirs = tuple(ROOT / "examples" / d for d in ("python-stdlib", "misbehaving"))
    with session(work, dirs) as s:
        try:
            s.start_daemon(shell_commands(Block("sh", f"pipevisor run --config {config}\n",
                                                0))[0])
            ran = run_shell(s, _block("README.md", README_TOUR))
            ran += run_shell(s, _block("docs/cli.md", CLI_EXAMPLES))
        except DocTestError as exc:
            raise AssertionError(f"{exc}\n{s.daemon_logs()}") from None
    assert any("crashy crash" in r for r in ran) and any("case $?" in r for r in ran), ran


def test_a_broken_page_fails(work: Path) -> None:
    """The harness can fail: a wrong expected line, an unexpected exit status, an
    unmarked source block and an unknown command are each reported with their line."""
    cases = {
        "```console\n$ pipevisor --version\npipevisor, version 99\n```\n": "line 2",
        "```console\n$ pipevisor stauts\n```\n": "exited 2",
        "```console\n$ pipevisor stauts\n$ echo $?\n0\n```\n": "expected the line",
        "```python\nprint()\n```\n": "needs `<!-- doc-test: file NAME -->`",
        "<!-- doc-test: skip -->\n```sh\nrm -rf /\n```\n": "needs a reason",
        "```sh\npipevisor call x y  # exit 4\n```\n": "the page says 4",
    }
    s = Session(work)
    for page, message in cases.items():
        with pytest.raises(DocTestError, match=message.replace("$", r"\$")):
            run_page(s, page)


def test_console_output_is_matched_loosely_but_in_order(work: Path) -> None:
    s = Session(work)
    run_page(s, "```console\n$ printf 'a  1\\nb 2\\nc 3\\n'\na 1\n...\nc ...\n$ false\n"
                "$ echo $?\n1\n```\n")
    with pytest.raises(DocTestError, match="expected the line"):
        run_page(s, "```console\n$ printf 'a\\nb\\n'\nb\na\n```\n")
