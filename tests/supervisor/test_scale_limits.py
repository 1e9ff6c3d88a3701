"""The descriptor limit and many plugins (issue 20): each running plugin holds 4
descriptors in the supervisor (3 pipes and a pidfd), so the supervisor raises its soft
RLIMIT_NOFILE to the hard limit when they would not fit under the soft one, and warns
once when even the hard limit is too low for the pipes (pidfds give way first). Run
in child interpreters, whose limits can be lowered without touching the test
session's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(code: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    return out


def test_soft_limit_raised_to_the_hard_one_only_when_plugins_would_not_fit() -> None:
    out = run(
        "import json, resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))\n"
        "from pipevisor.supervisor.proc import rlimits\n"
        "few = rlimits.raise_nofile_for(100)\n"
        "after_few = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "many = rlimits.raise_nofile_for(500)\n"
        "print(json.dumps({'few': few, 'after_few': after_few, 'many': many,\n"
        "  'after': resource.getrlimit(resource.RLIMIT_NOFILE),\n"
        "  'room_900': rlimits.nofile_room(900), 'room_1100': rlimits.nofile_room(1100),\n"
        "  'room_1300': rlimits.nofile_room(1300)}))\n")
    assert out["few"] is None and out["after_few"] == [1024, 4096]
    assert out["many"] == [4096, 4096] and out["after"] == [4096, 4096]
    assert out["room_900"] == [True, 4096]  # pipes: 900 * 3 + 256 = 2956
    assert out["room_1100"] == [True, 4096]
    assert out["room_1300"] == [False, 4096]  # 4156


def test_supervisor_raises_the_soft_limit_and_warns_once_past_the_hard_one() -> None:
    out = run(
        "import json, logging, resource, anyio\n"
        "from dataclasses import replace\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, 600))\n"
        "from pipevisor.supervisor import Supervisor\n"
        "from tests.supervisor.fake import fake_spec\n"
        "async def main():\n"
        "    specs = [replace(fake_spec(f'p{i}'), autostart=False) for i in range(150)]\n"
        "    async with Supervisor(specs):\n"
        "        return resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "print(json.dumps({'limits': anyio.run(main)}))\n")
    assert out["limits"] == [600, 600]
    stderr = str(out["stderr"])
    assert stderr.count("raised the soft descriptor limit") == 1, stderr
    # 115 plugins' pipes need 115 * 3 + 256 = 601 > 600: said once, not for each of the rest
    assert stderr.count("more than the hard limit 600") == 1, stderr
    assert "115 plugins need about 601 descriptors" in stderr, stderr
