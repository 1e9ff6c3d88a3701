"""The Bash plugin printed in protocol/SPEC.md 12.2, run as written: readers copy it, so it
must follow the rules the SPEC states (CRLF, blank lines, NOT_INITIALIZED, one handshake)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

SPEC = Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md"


def _sample() -> str:
    section = SPEC.read_text().split("### 12.2", 1)[1]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found is not None, "no ```bash block in SPEC 12.2"
    return found.group(1)


def _line(ident: Any, method: str, params: Any = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        msg["params"] = params
    return orjson.dumps(msg) + b"\n"


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    for tool in ("bash", "jq"):
        if shutil.which(tool) is None:
            reason = f"{tool} not found: apt-get install {tool}"
            if os.environ.get("PIPEVISOR_REQUIRE_TOOLCHAINS") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
    path = tmp_path / "pipevisor-spec-sample"
    path.write_text(_sample())
    path.chmod(0o755)
    return path


def test_the_spec_sample_follows_the_spec(plugin: Path) -> None:
    wide = "é" * 50_000 + "x"  # non-ASCII in a long line: the case the sample's tests are for
    lines = [
        _line(1, "pipevisor/ping"),                           # before the handshake
        _line(2, "pipevisor/handshake", {"protocol": "pipevisor",
                                         "protocolVersions": {"min": "1.0", "max": "1.0"}}),
        b"\n", b"  \t\r\n",                                   # blank lines: skipped
        _line(3, "pipevisor/ping").rstrip(b"\n") + b"\r\n",   # CRLF: one \r dropped
        _line(4, "echo.say", {"text": wide}),
        _line(5, "pipevisor/handshake", {"protocol": "pipevisor"}),  # a second one
        _line(6, "no.such"),
        b"not json\n",
        b"42\n",                                              # JSON, not an object
    ]
    done = subprocess.run([str(plugin)], input=b"".join(lines), capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answers = [orjson.loads(x) for x in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2, 3, 4, 5, 6, None, None]
    assert answers[0]["error"]["code"] == -31051
    assert answers[1]["result"]["protocolVersion"] == "1.0"
    assert answers[2]["result"] == {}
    assert answers[3]["result"] == {"text": wide}
    assert answers[4]["error"]["code"] == -32600
    assert "once" in answers[4]["error"]["message"]
    assert answers[5]["error"]["code"] == -32601
    assert answers[6]["error"]["code"] == -32700
    assert answers[7]["error"]["code"] == -32600  # [M-4.2a], not -32700 as it once said
