"""The conformance checker against real plugin processes: good ones pass, bad ones fail
for the right reason (the named check), and `pipevisor list`/`check` on the command line."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
from click.testing import CliRunner

from pipevisor.supervisor.cli.main import main
from pipevisor.supervisor.tools.checker import CheckOptions, CheckReport, Status, check_plugin
from tests.examples.toolchains import LANGUAGES, Example, unavailable
from tests.supervisor.fake import FAKE

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MISBEHAVING = EXAMPLES / "misbehaving"
FAKE_CMD = (sys.executable, FAKE)
# fake_plugin methods that crash, hang, spawn or need real params on purpose
FAKE_SKIP = frozenset({"crash", "hang", "garbage", "spawn_tree", "call_host", "sleep"})
QUICK = CheckOptions(timeout=2.0, grace=2.0, skip_methods=FAKE_SKIP, idle_seconds=0.3)


async def _check(*cmd: str | Path, opts: CheckOptions = QUICK) -> CheckReport:
    return await check_plugin(tuple(str(c) for c in cmd), opts)


def _status(report: CheckReport, name: str) -> Status:
    return report.get(name).status


# ------------------------------------------------------------------ good plugins


async def test_stdlib_echo_example_passes() -> None:
    report = await _check(EXAMPLES / "python-stdlib" / "pipevisor-echo")
    assert report.ok, report.to_json()
    for name in ("handshake", "ping", "unknown method", "method echo", "idle cpu",
                 "idle memory", "shutdown", "exit on end of input", "stdout is protocol only"):
        assert _status(report, name) is Status.PASS, name
    assert _status(report, "cancel") is Status.SKIP  # it does not claim cancel


async def test_fake_plugin_passes_and_honours_cancel() -> None:
    opts = CheckOptions(skip_methods=FAKE_SKIP, slow_method="sleep",
                        slow_params={"seconds": 30})
    report = await _check(*FAKE_CMD, opts=opts)
    assert report.ok, report.to_json()
    assert _status(report, "cancel") is Status.PASS
    assert "-31053" in report.get("cancel").detail
    assert _status(report, "method echo") is Status.PASS
    assert _status(report, "method crash") is Status.SKIP
    assert _status(report, "second handshake") is Status.PASS


async def test_a_slow_method_that_is_not_slow_warns_instead_of_failing() -> None:
    opts = CheckOptions(skip_methods=FAKE_SKIP, slow_method="echo", idle_seconds=0.3)
    report = await _check(*FAKE_CMD, opts=opts)
    assert report.ok, report.failed()
    assert _status(report, "cancel") is Status.WARN


async def test_cancel_without_slow_method_is_not_tested_with_a_hint() -> None:
    report = await _check(*FAKE_CMD)
    c = report.get("cancel")
    assert c.status is Status.SKIP and "--slow-method" in c.hint


LANGUAGE_EXAMPLES = {EXAMPLES / ex.executable: ex for ex in LANGUAGES}
"""Examples with a toolchain (bash/jq, node, go, c): run through the session build fixture
of tests/conftest.py (shared with tests/examples), which compiles go/c into a temporary
folder (not in place), so a fresh checkout checks them too; a missing toolchain skips, or
fails with PIPEVISOR_REQUIRE_TOOLCHAINS=1 (CI)."""


def _good_examples() -> list[Path]:
    found = {p for p in EXAMPLES.glob("*/pipevisor-*")
             if p.parent.name != "misbehaving" and not p.suffix}
    return sorted(found | set(LANGUAGE_EXAMPLES))  # compiled ones are listed even unbuilt


def _missing_interpreter(exe: Path) -> str | None:
    """For the script examples not in LANGUAGES: the #! interpreter, if it is not installed."""
    with exe.open("rb") as f:
        first = f.readline(200)
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        tool = words[1] if words and words[0].endswith("/env") and len(words) > 1 else words[0]
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.mark.parametrize("exe", [pytest.param(p, id=p.name) for p in _good_examples()])
async def test_every_good_example_passes(
        exe: Path, build: Callable[[Example], Path]) -> None:
    example = LANGUAGE_EXAMPLES.get(exe)
    if example is not None:
        exe = build(example)  # skips, or fails under PIPEVISOR_REQUIRE_TOOLCHAINS=1
    elif (why := _missing_interpreter(exe)) is not None:
        unavailable(f"{exe.relative_to(ROOT)}: {why}")
    report = await _check(exe, opts=CheckOptions(idle_seconds=0.5))
    assert report.ok, report.failed()
    second = report.get("second handshake")  # SPEC 6.1: -32600, not even a warning
    assert second.status is Status.PASS, second


@pytest.mark.parametrize(("exe", "field"), [("pipevisor-greeter-v1", "params.name"),
                                           ("pipevisor-greeter-v2", "params.who")])
async def test_greeters_answer_greet_without_params_naming_the_missing_field(
        exe: str, field: str) -> None:
    report = await _check(EXAMPLES / "interfaces" / exe, opts=CheckOptions(idle_seconds=0.3))
    greet = report.get("method greet")
    assert greet.status is Status.PASS and "-32602" in greet.detail, greet.detail
    assert f"missing field {field}" in greet.detail
    assert _status(report, "method about") is Status.PASS  # it kept serving after the bad call


def test_good_example_list_is_not_empty() -> None:
    names = {p.name for p in _good_examples()}
    assert "pipevisor-echo" in names


# ------------------------------------------------------------------ misbehaving examples


async def test_garbage_fails_stdout_check_only() -> None:
    report = await _check(MISBEHAVING / "pipevisor-garbage", opts=CheckOptions())
    assert report.failed() == ["stdout is protocol only"]
    assert "not JSON" in report.get("stdout is protocol only").detail


async def test_spinner_fails_idle_cpu_only() -> None:
    report = await _check(MISBEHAVING / "pipevisor-spinner", opts=CheckOptions())
    assert report.failed() == ["idle cpu"]


async def test_leaky_fails_idle_memory_only() -> None:
    report = await _check(MISBEHAVING / "pipevisor-leaky", opts=CheckOptions())
    assert report.failed() == ["idle memory"]
    assert "grew" in report.get("idle memory").detail


async def test_crashy_fails_on_the_method_that_kills_it() -> None:
    report = await _check(MISBEHAVING / "pipevisor-crashy", "--crash-after", "0",
                          opts=CheckOptions())
    assert report.failed() == ["method crash"]
    assert "exited with code 3" in report.get("method crash").detail
    assert _status(report, "shutdown") is Status.SKIP  # not run: it is gone


async def test_hangs_fails_ping_and_is_judged_quickly() -> None:
    report = await _check(MISBEHAVING / "pipevisor-hangs",
                          opts=CheckOptions(timeout=0.5, grace=0.5))
    assert report.failed() == ["ping"]
    assert "not run" in report.get("shutdown").detail
    assert report.seconds < 10


# ------------------------------------------------------------------ fake plugin faults


async def test_garbage_at_start_fails_stdout_check() -> None:
    report = await _check(*FAKE_CMD, "--garbage-at-start")
    assert "stdout is protocol only" in report.failed()


async def test_ignoring_eof_fails_the_eof_check() -> None:
    report = await _check(*FAKE_CMD, "--ignore-eof", opts=CheckOptions(
        skip_methods=FAKE_SKIP, grace=0.5))
    assert report.failed() == ["exit on end of input"]
    assert _status(report, "shutdown") is Status.PASS


async def test_bad_exit_status_after_shutdown_fails() -> None:
    report = await _check(*FAKE_CMD, "--exit-on-shutdown", "3")
    assert report.failed() == ["shutdown"]
    assert "exited with code 3" in report.get("shutdown").detail


async def test_no_handshake_fails_handshake_and_runs_nothing_else() -> None:
    report = await _check(*FAKE_CMD, "--no-handshake", opts=CheckOptions(timeout=0.5))
    assert report.failed()[0] == "handshake"
    assert _status(report, "ping") is Status.SKIP


async def test_unsupported_protocol_fails_handshake() -> None:
    report = await _check(*FAKE_CMD, "--protocol", "9.0")
    assert report.failed() == ["handshake"]


def _script(tmp_path: Path, body: str) -> Path:
    """A tiny plugin written for one test: reads lines, answers with ``reply(msg)``."""
    p = tmp_path / "pipevisor-tiny"
    p.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""\
        import json, sys
        def send(obj):
            sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
        HS = {"protocolVersion": "1.0", "plugin": {"name": "tiny", "version": "1"},
              "methods": {}, "capabilities": {}}
        seen = False  # for bodies that tell the first handshake from a second one
        for line in sys.stdin:
            msg = json.loads(line)
            if "id" not in msg:
                continue
        """) + textwrap.indent(textwrap.dedent(body), "    "))
    p.chmod(0o755)
    return p


async def test_schema_invalid_handshake_result_is_named(tmp_path: Path) -> None:
    exe = _script(tmp_path, """\
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": "1.0"}})
        """)
    report = await _check(exe)
    assert report.failed() == ["handshake"]
    assert "invalid handshake result" in report.get("handshake").detail


async def test_unknown_method_answered_with_a_result_fails(tmp_path: Path) -> None:
    exe = _script(tmp_path, """\
        result = HS if msg["method"] == "pipevisor/handshake" else {}
        send({"jsonrpc": "2.0", "id": msg["id"], "result": result})
        """)
    report = await _check(exe)
    assert report.failed() == ["unknown method"]
    assert "-32601" in report.get("unknown method").hint


@pytest.mark.parametrize("again", [
    'send({"jsonrpc": "2.0", "id": msg["id"], "result": HS})',
    'send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}})',
], ids=["result", "-32601"])
async def test_a_second_handshake_not_answered_32600_is_a_warning(tmp_path: Path,
                                                                   again: str) -> None:
    exe = _script(tmp_path, f"""\
        if msg["method"] == "pipevisor/handshake" and not seen:
            seen = True
            send({{"jsonrpc": "2.0", "id": msg["id"], "result": HS}})
        elif msg["method"] == "pipevisor/handshake":
            {again}
        elif msg["method"] == "pipevisor/ping":
            send({{"jsonrpc": "2.0", "id": msg["id"], "result": {{}}}})
        else:
            send({{"jsonrpc": "2.0", "id": msg["id"],
                  "error": {{"code": -32601, "message": "no"}}}})
        """)
    report = await _check(exe)
    second = report.get("second handshake")
    assert second.status is Status.WARN and "-32600" in second.hint, second
    assert report.ok, report.failed()  # a host never sends it: not a failure
    assert _status(report, "ping") is Status.PASS


async def test_a_second_handshake_left_unanswered_fails(tmp_path: Path) -> None:
    exe = _script(tmp_path, """\
        if msg["method"] == "pipevisor/handshake" and not seen:
            seen = True
            send({"jsonrpc": "2.0", "id": msg["id"], "result": HS})
        elif msg["method"] == "pipevisor/ping":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        elif msg["method"] != "pipevisor/handshake":
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "error": {"code": -32601, "message": "no"}})
        """)
    report = await _check(exe, opts=CheckOptions(timeout=1.0, idle_seconds=0.3))
    assert report.failed() == ["second handshake"], report.failed()


async def test_json_on_stderr_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    exe = _script(tmp_path, """\
        sys.stderr.write(json.dumps({"jsonrpc": "2.0", "oops": 1}) + "\\n")
        if msg["method"] == "pipevisor/handshake":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": HS})
        elif msg["method"] == "pipevisor/ping":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "error": {"code": -32601, "message": "no"}})
        """)
    report = await _check(exe)
    assert report.ok, report.failed()
    assert _status(report, "stderr is the log") is Status.WARN


# ------------------------------------------------------------------ command line


def test_cli_check_json_and_exit_status() -> None:
    res = CliRunner().invoke(main, ["check", "--json", "--timeout", "2",
                                    str(MISBEHAVING / "pipevisor-garbage")])
    assert res.exit_code == 1, res.output
    report = orjson.loads(res.output)
    assert report["ok"] is False
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == ["stdout is protocol only"]


def test_cli_check_text_passes_plugin_args_through() -> None:
    res = CliRunner().invoke(main, ["check", "--skip", "crash", "--skip", "hang", "--skip",
                                    "garbage", "--skip", "spawn_tree", "--skip", "call_host",
                                    "--skip", "sleep", sys.executable, FAKE,
                                    "--", "--exit-on-shutdown", "5"])
    assert res.exit_code == 1
    assert "FAIL  shutdown" in res.output and "hint:" in res.output


def test_cli_check_resolves_a_discovered_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{EXAMPLES / 'python-stdlib'}{os.pathsep}{os.environ['PATH']}")
    res = CliRunner().invoke(main, ["check", "echo"])
    assert res.exit_code == 0, res.output
    assert res.output.rstrip().splitlines()[-1].startswith("OK")


def test_cli_check_unknown_plugin_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    res = CliRunner().invoke(main, ["check", "nosuchplugin"])
    assert res.exit_code == 2 and "pipevisor list" in res.output


@pytest.mark.parametrize("target", ["examples/c/pipevisor-c-echo.c", "examples"])
def test_cli_check_refuses_what_cannot_run(target: str) -> None:
    res = CliRunner().invoke(main, ["check", str(ROOT / target)])
    assert res.exit_code == 1
    assert "not an executable file" in res.output and target in res.output


def test_cli_list_text_and_json(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["list", "--no-path", "--dir", str(MISBEHAVING),
                                    "--dir", str(tmp_path / "missing")])
    assert res.exit_code == 0
    assert f"hangs    {MISBEHAVING / 'pipevisor-hangs'}" in res.output
    assert "warning:" in res.output and "does not exist" in res.output
    res = CliRunner().invoke(main, ["list", "--no-path", "--json", "--dir", str(MISBEHAVING)])
    data = orjson.loads(res.output)
    assert {p["name"] for p in data["found"]} >= {"crashy", "garbage", "hangs", "leaky",
                                                  "spinner"}


def test_cli_list_nothing_found_exits_zero_and_says_so(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["list", "--no-path", "--dir", str(tmp_path)])
    assert res.exit_code == 0
    assert "no plugins found" in res.output


def test_cli_list_rejects_a_bad_prefix() -> None:
    res = CliRunner().invoke(main, ["list", "--prefix", "a/b"])
    assert res.exit_code == 2 and "prefix" in res.output


def test_cli_check_options_after_the_plugin_are_the_checkers() -> None:
    """Typed after the plugin, --skip and --params still reach the checker (they used to
    be passed to the plugin silently); the report says what each method got."""
    echo = str(EXAMPLES / "python-stdlib" / "pipevisor-echo")
    res = CliRunner().invoke(main, ["check", echo, "--skip", "add",
                                    "--params", 'echo={"text":"hi"}'])
    assert res.exit_code == 0, res.output
    lines = {line.split()[1] + " " + line.split()[2]: line
             for line in res.output.splitlines() if line.startswith("  ")
             and len(line.split()) > 2}
    assert "skipped (--skip)" in lines["method add"]
    assert 'called with {"text":"hi"}: answered with a result' in lines["method echo"]
    assert "called with {}: answered with error -32602" in lines["method reverse"]


def test_cli_check_refuses_an_option_it_does_not_know() -> None:
    echo = str(EXAMPLES / "python-stdlib" / "pipevisor-echo")
    res = CliRunner().invoke(main, ["check", echo, "--verbose"])
    assert res.exit_code == 2 and "--verbose" in res.output


async def test_a_plugin_without_the_kit_gets_a_hint_saying_so(tmp_path: Path) -> None:
    plugin = tmp_path / "pipevisor-nokit"
    plugin.write_text("from pipevisor.kit import Plugin\n")
    # -S: no site-packages, as for a plugin whose interpreter lacks pipevisor-kit
    report = await _check(sys.executable, "-S", plugin)
    check = report.get("handshake")
    assert check.status is Status.FAIL
    assert "could not import the kit" in check.hint and "docs/plugin-kit.md" in check.hint


async def test_the_checker_starts_a_plugin_as_the_daemon_does_with_no_new_privs() -> None:
    """`pipevisor check` used to start plugins without the daemon's default privileges."""
    from pipevisor.supervisor.tools.checker import _spawn

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/status is Linux's")
    process = await _spawn((sys.executable, "-c",
                            "print(open('/proc/self/status').read(), flush=True)"))
    try:
        assert process.stdout is not None
        out = b""
        with anyio.fail_after(20):
            async for chunk in process.stdout:
                out += chunk
        await process.wait()
    finally:
        await process.aclose()
    assert b"NoNewPrivs:\t1" in out, out[-400:]
