"""Write roff man pages for ``pipevisor`` and each of its subcommands, from the click
commands themselves (their help, arguments and options), into docs/man/.

    scripts/gen-man            # (re)write docs/man/*.1
    scripts/gen-man --check    # exit 1, naming the pages, when docs/man/ is stale
    man -l docs/man/pipevisor-run.1

No dependency beyond click, which the CLI already needs: the pages are built with
click's own introspection (``Command.collect_usage_pieces``, ``Parameter.get_help_record``),
not by parsing ``--help``. The output depends only on the commands and the VERSION file
(no date, no terminal width), so a test can regenerate the pages and compare
(tests/docs/test_man_pages.py).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
MAN_DIR = ROOT / "docs" / "man"
if str(ROOT) not in sys.path:  # run from a bare checkout: pipevisor/ holds the symlinks
    sys.path.insert(0, str(ROOT))


def _escape(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, ``x`` in bold."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"``(.+?)``", r"\\fB\1\\fR", text)


def _line(text: str) -> str:
    """One line of roff text: a leading ``.`` or ``'`` would be read as a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def _paragraphs(help_text: str) -> Iterator[str]:
    """The description as roff paragraphs: click's ``\\b`` blocks and indented examples
    are kept as written (no filling), every other paragraph is filled by the formatter."""
    text = inspect.cleandoc(help_text).split("\f", 1)[0]
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        lines = para.splitlines()
        if lines[0].strip() == "\b":
            yield ".PP\n.nf\n" + "\n".join(_line(_escape(x)) for x in lines[1:]) + "\n.fi"
        elif all(x[:1].isspace() for x in lines):  # an indented example: kept as written
            body = "\n".join(_line(_escape(x.strip())) for x in lines)
            yield f".PP\n.RS 4\n.nf\n{body}\n.fi\n.RE"
        else:
            yield ".PP\n" + _line(_escape(" ".join(x.strip() for x in lines)))


def _context(cmd: click.Command, name: str, parent: click.Context | None) -> click.Context:
    """The context click would make for ``cmd`` (its context_settings, such as ``-h``)."""
    return click.Context(cmd, info_name=name, parent=parent, **cmd.context_settings)


def _commands(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    found = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is not None and not cmd.hidden:
            found.append((name, cmd))
    return found


def page(cmd: click.Command, path: list[str], version: str,
         parent: click.Context | None = None) -> str:
    """The man page of ``cmd``, called as ``path`` (``["pipevisor", "run"]``)."""
    ctx = _context(cmd, path[-1], parent)
    title = "-".join(path)
    short = cmd.get_short_help_str(limit=10_000).rstrip(".")
    out = [f'.TH {_escape(title.upper())} 1 "" "pipevisor {version}" "pipevisor manual"',
           ".SH NAME", f"{_escape(title)} \\- {_escape(short)}",
           ".SH SYNOPSIS", f".B {_escape(' '.join(path))}",
           _line(_escape(" ".join(cmd.collect_usage_pieces(ctx))))]
    if cmd.help:
        out.append(".SH DESCRIPTION")
        out.extend(_paragraphs(cmd.help))
    # options only: click 8.5 started giving arguments help records too, and the
    # arguments are already in the synopsis; this keeps the pages the same across
    # click versions (CI installs the newest)
    records = [r for p in cmd.get_params(ctx)
               if isinstance(p, click.Option) and (r := p.get_help_record(ctx)) is not None]
    if records:
        out.append(".SH OPTIONS")
        for opts, help_text in records:
            out += [".TP", f"\\fB{_escape(opts)}\\fR", _line(_escape(help_text or ""))]
    if isinstance(cmd, click.Group):
        out.append(".SH COMMANDS")
        for name, sub in _commands(cmd, ctx):
            out += [".TP", f"\\fB{_escape(title)}\\-{_escape(name)}\\fR(1)",
                    _line(_escape(sub.get_short_help_str(limit=10_000)))]
    out.append(".SH SEE ALSO")
    see = ["pipevisor(1)"] if len(path) > 1 else []
    see.append("the docs folder of the pipevisor repository (docs/cli.md, docs/tutorial.md)")
    out.append(_escape(", ".join(see)))
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """File name -> text, for ``pipevisor`` and every visible subcommand (recursively)."""
    from pipevisor.supervisor.cli.main import main

    version = (ROOT / "VERSION").read_text().strip()
    result: dict[str, str] = {}

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        result["-".join(path) + ".1"] = page(cmd, path, version, parent)
        if isinstance(cmd, click.Group):
            ctx = _context(cmd, path[-1], parent)
            for name, sub in _commands(cmd, ctx):
                walk(sub, [*path, name], ctx)

    walk(main, ["pipevisor"], None)
    return result


def write(folder: Path) -> list[str]:
    """Write every page into ``folder``; remove pages of commands that are gone.
    Returns the names of the files that changed."""
    folder.mkdir(parents=True, exist_ok=True)
    want = pages()
    changed = []
    for old in folder.glob("*.1"):
        if old.name not in want:
            old.unlink()
            changed.append(old.name)
    for name, text in want.items():
        target = folder / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            changed.append(name)
    return sorted(changed)


def stale(folder: Path) -> list[str]:
    """The pages in ``folder`` that differ from freshly generated ones, missing or extra."""
    want = pages()
    have = {p.name for p in folder.glob("*.1")}
    return sorted({n for n in want if n not in have or (folder / n).read_text() != want[n]}
                  | (have - set(want)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-man", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming the pages that are stale")
    parser.add_argument("--out", type=Path, default=MAN_DIR, help="default: docs/man")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.out)
        for name in out_of_date:
            sys.stderr.write(f"gen-man: {args.out / name} is stale\n")
        if out_of_date:
            sys.stderr.write("gen-man: run scripts/gen-man and commit docs/man/\n")
        return 1 if out_of_date else 0
    for name in write(args.out):
        sys.stdout.write(f"wrote {args.out / name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
