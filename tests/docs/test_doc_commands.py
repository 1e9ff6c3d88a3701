"""Every ``pipevisor ...`` command the docs quote inline (in backticks, where no test can
run it) names a real subcommand and real options of it, so a renamed command or option
cannot linger in the prose. The shell blocks are run by test_doc_blocks.py."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from pipevisor.supervisor.cli.main import main
from tests.docs.doc_blocks import ROOT

PAGES = ["docs/tutorial.md", "docs/faq.md", "docs/comparison.md", "README.md", "docs/cli.md"]
_SPAN = re.compile(r"`(pipevisor (?:[a-z-]+)(?: [^`]*)?)`")


def _problems(text: str) -> list[str]:
    """What is wrong with one quoted command line (empty when it is fine)."""
    try:
        words = shlex.split(re.sub(r"[][]", " ", text.replace("...", "")))
    except ValueError:
        words = text.split()
    command: click.Command = main
    ctx = click.Context(main, info_name="pipevisor", **main.context_settings)
    problems = []
    for word in words[1:]:
        if word in ("|", "&&", ";", ">", "2>&1") or word.startswith(">"):
            break
        if word == "--":
            break
        if isinstance(command, click.Group) and not word.startswith("-"):
            sub = command.get_command(ctx, word)
            if sub is None:
                if word.isupper() or "|" in word:  # a placeholder such as COMMAND
                    break
                problems.append(f"no command {word!r}")
                break
            command = sub
            ctx = click.Context(sub, info_name=word, parent=ctx, **sub.context_settings)
            continue
        if word.startswith("-") and word not in ("-",):
            name = word.split("=", 1)[0]
            known = {o for p in command.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
            if name not in known:
                problems.append(f"{command.name}: no option {name!r}")
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_inline_commands_exist(page: str) -> None:
    text = (ROOT / page).read_text()
    bad = {span: p for span in _SPAN.findall(text) if (p := _problems(span))}
    assert not bad, f"{page}: quoted commands that do not exist: {bad}"


def test_a_wrong_command_is_caught() -> None:
    assert _problems("pipevisor stauts") == ["no command 'stauts'"]
    assert _problems("pipevisor reload --dry-rnu") == ["reload: no option '--dry-rnu'"]
    assert _problems("pipevisor check ./x --timeout 2 -- --db /tmp/x") == []
    assert _problems("pipevisor COMMAND --help") == []


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+\s+(.+)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", ["docs/tutorial.md", "docs/faq.md", "docs/comparison.md",
                                  "README.md"])
def test_relative_links_resolve(page: str) -> None:
    """Every relative link of the new pages points at a file that exists, and at a
    heading of it when it names one."""
    source = ROOT / page
    broken = []
    for target in _LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        missing_anchor = (file.exists() and anchor != "" and file.suffix == ".md"
                          and anchor not in _anchors(file.read_text()))
        if not file.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page}: broken links {broken}"
