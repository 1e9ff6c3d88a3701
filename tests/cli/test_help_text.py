"""What ``--help`` shows a reader (#19 doc review): every summary whole, no markup from
another format (RST ``x``, Markdown `x`), doc paths unbroken, every event kind named."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from pipevisor.supervisor.cli.control import EVENT_KINDS
from pipevisor.supervisor.cli.main import main

COMMANDS = sorted(main.commands)


def _help(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_summary_in_the_command_list_is_whole() -> None:
    text = _help()
    listed = text.split("Commands:\n", 1)[1].splitlines()
    assert len(listed) == len(COMMANDS)  # one line each: none wraps either
    cut = [line.strip() for line in listed if line.rstrip().endswith("...")]
    assert not cut, f"summaries cut by click (set short_help): {cut}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_no_markup_and_whole_doc_paths(name: str) -> None:
    text = _help(name)
    assert "``" not in text and "`" not in text, f"markup in `pipevisor {name} --help`"
    command = main.commands[name]
    sources = [command.help or ""] + [p.help or "" for p in command.params
                                      if isinstance(p, click.Option)]
    for path in set(re.findall(r"(?:docs|protocol)/[\w./-]+\.md", " ".join(sources))):
        assert path in text, f"{path} is broken across lines in `pipevisor {name} --help`"


def test_the_kind_help_names_every_event_kind() -> None:
    from pipevisor.supervisor.engine.events import EventKind

    assert set(EVENT_KINDS) == {str(k) for k in EventKind}
    flat = " ".join(_help("events").split())
    for kind in EventKind:
        assert f"{kind}" in flat
