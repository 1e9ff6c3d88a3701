"""Run the shell examples of a Markdown page against a real ``pipevisor run``, so that the
docs cannot rot (issue #19). The convention, for pages written to be tested
(docs/tutorial.md):

* A fenced block is acted on according to the HTML comment right above it (invisible on
  GitHub), ``<!-- doc-test: ACTION ARGS -->``:

  - ``file NAME``: the block's text is written to NAME in the work folder (made
    executable when it starts with ``#!``); ``file NAME append`` adds it to the end.
  - ``daemon``: a ``console`` block whose one command (``$ pipevisor run ...``) is started
    in the background, in a process group of its own; the next block runs once
    ``pipevisor status`` answers. Its expected lines are looked for in the daemon's
    stderr. The daemon is stopped (SIGTERM, then SIGKILL to its group) when the page is
    done, failed or not.
  - ``skip REASON``: not run; the reason says why.

* A ``console`` (or ``sh``) block with no comment is run, command by command. A page
  under test may not hold a block that is neither run, written, nor skipped with a
  reason: a ``python``, ``js`` or ``toml`` block must say ``file`` or ``skip``.

* In a ``console`` block a command is a line starting with ``$ ``, continued by lines
  after a trailing backslash. The lines up to the next command are its expected output,
  checked loosely: each one must match a line of the command's stdout and stderr
  together, in order, spaces collapsed, where ``...`` stands for any text (a line that is
  only ``...`` says that output was left out).

* Every command must exit 0, unless the command after it is ``echo $?``: each command
  runs in a fresh ``bash -c`` started with the previous command's status (``(exit N);
  CMD``), so ``echo $?`` prints it and the expected line under it checks it.

``sh`` blocks of pages not written for the test (README.md, docs/cli.md) are run with
:func:`shell_commands`: a command is as many lines as ``bash -n`` needs to parse, a
``# ... exit N`` comment on it is the exit status it must have, and a command that follows
events forever (``pipevisor events``, ``logs --follow``, ``top`` without ``-n``) is
stopped after :data:`FOLLOW_SECONDS` and passes if it was still running, error-free.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLLOW_SECONDS = 1.5
COMMAND_TIMEOUT = 60.0
"""A command's deadline: generous for a loaded 2-core box, never reached when it works."""

_MARKER = re.compile(r"<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->")
_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_RUNNABLE = {"console", "sh", "shell", "bash"}


class DocTestError(AssertionError):
    """A block of a page did not do what the page says; the message names the line."""


@dataclass
class Block:
    lang: str
    text: str
    line: int
    """The 1-based line of the opening fence."""
    action: str = ""
    args: str = ""


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)
    line: int = 0


def blocks(markdown: str) -> list[Block]:
    """The fenced blocks of ``markdown``, each with the ``doc-test`` comment above it."""
    found: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    pending: tuple[str, str] | None = None
    while i < len(lines):
        marker = _MARKER.search(lines[i])
        if marker:
            pending = (marker.group(1), marker.group(2))
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                pending = None
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence.group(1)):
            body.append(lines[i])
            i += 1
        action, args = pending or ("", "")
        found.append(Block(fence.group(2), "\n".join(body) + "\n", start + 1, action, args))
        pending = None
        i += 1
    return found


def console_commands(block: Block) -> list[Command]:
    """The ``$ `` commands of a console block with their expected output lines."""
    commands: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            text = line[2:]
            start = i
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text + "\n" + lines[i].removeprefix("> ")
            commands.append(Command(text, line=block.line + 1 + start))
        elif line.strip():
            if not commands:
                raise DocTestError(f"line {block.line + 1 + i}: output before any `$ ` command")
            commands[-1].expected.append(line)
        i += 1
    return commands


def shell_commands(block: Block) -> list[Command]:
    """An ``sh`` block cut into commands: each as many lines as ``bash -n`` needs."""
    commands: list[Command] = []
    chunk: list[str] = []
    first = 0
    for n, line in enumerate(block.text.splitlines()):
        if not chunk and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not chunk:
            first = n
        chunk.append(line)
        text = "\n".join(chunk)
        if text.rstrip().endswith("\\"):
            continue
        parsed = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True,
                                check=False)
        if parsed.returncode == 0:
            commands.append(Command(text, line=block.line + 1 + first))
            chunk = []
    if chunk:
        raise DocTestError(f"line {block.line + 1 + first}: not a complete shell command: "
                           + "\n".join(chunk))
    return commands


def _pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in " ".join(expected.split()).split("...")]
    return re.compile(".*".join(parts))


def check_output(command: Command, output: str) -> None:
    """Each expected line matches an output line, in order (see the module's doc)."""
    actual = [" ".join(line.split()) for line in output.splitlines()]
    at = 0
    for want in command.expected:
        if want.strip() == "...":
            continue
        pattern = _pattern(want)
        while at < len(actual) and not pattern.fullmatch(actual[at]):
            at += 1
        if at == len(actual):
            raise DocTestError(f"line {command.line}: `{command.text}`: expected the line\n"
                               f"    {want}\nin order in its output:\n{output}")
        at += 1


def _follows(text: str) -> bool:
    """Whether the command prints events until stopped (it is run for a while only)."""
    return bool(re.search(r"\bpipevisor\s+events\b|--follow\b|\bpipevisor\s+top\b(?!.*\s-n)",
                          text))


_EXIT_COMMENT = re.compile(r"#.*\bexit (\d+)")


class Session:
    """A work folder and an environment in which a page's commands run: a private
    ``$XDG_RUNTIME_DIR`` (so the daemon's socket and state dir are the page's own) and
    ``bin/`` first on PATH with ``pipevisor`` and ``python3`` for this checkout."""

    def __init__(self, work: Path, path_dirs: tuple[Path, ...] = ()) -> None:
        self.work = work
        runtime = work / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        bindir = work / "bin"
        bindir.mkdir(exist_ok=True)
        pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        for name, argv in (("pipevisor", f"{shlex.quote(sys.executable)} -m pipevisor.supervisor"),
                           ("python3", shlex.quote(sys.executable))):
            script = bindir / name
            script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(pythonpath)} "
                              f"exec {argv} \"$@\"\n")
            script.chmod(0o755)
        path = os.pathsep.join([str(bindir), *map(str, path_dirs), os.environ["PATH"]])
        self.env: dict[str, str] = {
            **{k: v for k, v in os.environ.items()
               if k not in {"PIPEVISOR_SOCKET", "NOTIFY_SOCKET", "JOURNAL_STREAM", "NO_COLOR"}},
            "PATH": path, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(work),
            "COLUMNS": "80", "NO_COLOR": "1",
        }
        self.status = 0
        self.daemons: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(self, command: Command, *, follow: bool = False) -> tuple[int, str]:
        """Run one command as the page's reader would; (exit status, stdout + stderr)."""
        script = f"(exit {self.status})\n{command.text}"
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.work, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=FOLLOW_SECONDS if follow else COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            text = proc.communicate()[0].decode(errors="replace")
            if not follow:
                raise DocTestError(f"line {command.line}: `{command.text}` did not end within "
                                   f"{COMMAND_TIMEOUT} s:\n{text}") from None
            return -1, text
        self.status = proc.returncode
        return proc.returncode, out.decode(errors="replace")

    def start_daemon(self, command: Command, timeout: float = 30.0) -> None:
        """Start ``pipevisor run ...`` in the background; return once ``pipevisor status``
        answers (polled with a deadline, never a fixed sleep)."""
        log = self.work / f"daemon-{len(self.daemons)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(["bash", "-c", f"exec {command.text}"], cwd=self.work,
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=err,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.daemons.append((proc, log))
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise DocTestError(f"line {command.line}: `{command.text}` exited "
                                   f"{proc.returncode}:\n{log.read_text()}")
            probe = subprocess.run(["pipevisor", "status", "--json"], env=self.env,
                                   cwd=self.work, capture_output=True, check=False,
                                   timeout=COMMAND_TIMEOUT)
            if probe.returncode == 0 and b'"ready"' in probe.stdout:
                break
            if time.monotonic() > deadline:
                raise DocTestError(f"line {command.line}: the daemon was not up within "
                                   f"{timeout} s:\n{log.read_text()}")
            time.sleep(0.05)
        # the expected lines are the daemon's start-up log: wait for them too
        while True:
            try:
                check_output(command, log.read_text())
                return
            except DocTestError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def stop_daemons(self) -> None:
        for proc, _ in self.daemons:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(proc)
            proc.wait()

    def daemon_logs(self) -> str:
        return "".join(f"--- {log.name}\n{log.read_text()}" for _, log in self.daemons
                       if log.exists())


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def session(work: Path, path_dirs: tuple[Path, ...] = ()) -> Iterator[Session]:
    s = Session(work, path_dirs)
    try:
        yield s
    finally:
        s.stop_daemons()


def run_console(s: Session, block: Block) -> None:
    commands = console_commands(block)
    for i, command in enumerate(commands):
        status, output = s.run(command)
        checks_status = i + 1 < len(commands) and commands[i + 1].text.strip() == "echo $?"
        if status != 0 and not checks_status:
            raise DocTestError(f"line {command.line}: `{command.text}` exited {status}:\n{output}")
        check_output(command, output)


def run_shell(s: Session, block: Block, skip: Mapping[str, str] | None = None) -> list[str]:
    """Run an ``sh`` block of a page not written for the test; returns what ran. A
    command holding a key of ``skip`` is left out (the value says why)."""
    ran: list[str] = []
    commands = [c for c in shell_commands(block)
                if not any(key in c.text for key in (skip or {}))]
    for i, command in enumerate(commands):
        expected = _EXIT_COMMENT.search(command.text)
        want = int(expected.group(1)) if expected else 0
        # a status the next command reads (`case $? in`) is the page's to handle
        checked_next = i + 1 < len(commands) and "$?" in commands[i + 1].text
        follow = _follows(command.text)
        status, output = s.run(command, follow=follow)
        if follow:
            if status != -1:
                raise DocTestError(f"line {command.line}: `{command.text}` should follow until "
                                   f"stopped, but exited {status}:\n{output}")
            if "pipevisor:" in output or "Error" in output:
                raise DocTestError(f"line {command.line}: `{command.text}`:\n{output}")
        elif status != want and not checked_next:
            raise DocTestError(f"line {command.line}: `{command.text}` exited {status}, "
                               f"the page says {want}:\n{output}")
        ran.append(command.text)
    return ran


def run_page(s: Session, markdown: str) -> None:
    """Every block of a page written for the test, in order (see the module's doc)."""
    for block in blocks(markdown):
        where = f"line {block.line}"
        if block.action == "skip":
            if not block.args:
                raise DocTestError(f"{where}: `doc-test: skip` needs a reason")
        elif block.action == "file":
            name, _, mode = block.args.partition(" ")
            path = s.work / name
            if mode not in ("", "append"):
                raise DocTestError(f"{where}: `doc-test: file NAME [append]`, not {block.args}")
            with open(path, "a" if mode == "append" else "w") as f:
                f.write(block.text)
            if block.text.startswith("#!"):
                path.chmod(0o755)
        elif block.action == "daemon":
            commands = console_commands(block)
            if block.lang != "console" or len(commands) != 1:
                raise DocTestError(f"{where}: a daemon block is a console block with one command")
            s.start_daemon(commands[0])
        elif block.action:
            raise DocTestError(f"{where}: unknown doc-test action {block.action!r}")
        elif block.lang == "console":
            run_console(s, block)
        elif block.lang in _RUNNABLE:
            run_shell(s, block)
        else:
            raise DocTestError(f"{where}: a {block.lang or 'plain'} block needs "
                               "`<!-- doc-test: file NAME -->` or `<!-- doc-test: skip REASON -->`")
