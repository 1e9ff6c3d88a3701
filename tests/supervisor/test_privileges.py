"""Privileges per plugin (issue 14, item 6): user and group, no_new_privs, a Landlock
sandbox, each observed from inside a real plugin process (/proc/self/status, a write, a
read, a bind) and reported in the plugin's status.

A second user is uid 65534 (nobody), which needs the tests to run as root; those tests
skip with that reason otherwise. Sandbox tests skip where the kernel has no Landlock.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipevisor.supervisor import Supervisor, SupervisorConfig
from pipevisor.supervisor.daemon.config_file import parse
from pipevisor.supervisor.engine.config import HealthPolicy, PluginSpec, StopPolicy
from pipevisor.supervisor.engine.policy import RestartPolicy
from pipevisor.supervisor.errors import ConfigError
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc.privileges import Privileges, Sandbox, landlock_abi
from pipevisor.supervisor.proc.spawn import SpawnError, plan

PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "priv_plugin.py"
PYTHON = "/usr/bin/python3"
"""A system interpreter that any user may run (ours may live under root's 0700 home)."""
NOBODY = 65534

pytestmark = [
    pytest.mark.skipif(not _platform.IS_LINUX, reason="reads /proc/self/status; Linux only"),
    pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"needs {PYTHON}"),
]
root_only = pytest.mark.skipif(os.geteuid() != 0,
                               reason="a second uid (65534) needs the tests to run as root")
ABI, NO_LANDLOCK = landlock_abi()
needs_landlock = pytest.mark.skipif(ABI < 1, reason=f"no Landlock here: {NO_LANDLOCK}")


def spec(name: str = "priv", **kwargs: Any) -> PluginSpec:
    return PluginSpec(name, (PYTHON, "-I", "-S", str(PLUGIN)),
                      restart=RestartPolicy(max_restarts=0),
                      stop=StopPolicy(shutdown_grace=2.0, eof_grace=1.0, term_grace=1.0),
                      health=HealthPolicy(handshake_timeout=10.0, ping_interval=0),
                      **kwargs)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder in /tmp that the plugin's user (nobody) can reach."""
    folder = Path(tempfile.mkdtemp(prefix="pv-priv-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def run(plugin: PluginSpec, *calls: tuple[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Start the plugin, make the calls, return their results and its status."""
    async with Supervisor(SupervisorConfig(plugins=[plugin])) as sup:
        await sup.wait_ready([plugin.name], timeout=20)
        results = [await sup.call(plugin.name, method, params, timeout=10)
                   for method, params in calls]
        status = sup.runner(plugin.name).status()
    return results, status


def ids(line: str) -> list[int]:
    return [int(v) for v in line.split()]


@root_only
@pytest.mark.anyio
async def test_a_plugin_given_user_nobody_runs_as_65534_without_groups() -> None:
    saved = os.getgroups()
    os.setgroups([*saved, 4, 27])  # supplementary groups the plugin would otherwise inherit
    try:
        (seen,), status = await run(spec(user="nobody"), ("status", None))
        (inherited,), _ = await run(spec(), ("status", None))
    finally:
        os.setgroups(saved)
    assert {4, 27} <= set(ids(inherited["Groups"]))  # what the drop has to clear
    assert ids(seen["Uid"]) == [NOBODY] * 4
    assert ids(seen["Gid"]) == [NOBODY] * 4  # nobody's primary group (nogroup)
    assert seen["Groups"] == ""
    privs = status["containment"]["privileges"]
    assert (privs["uid"], privs["gid"], privs["supplementary_groups"]) == (
        NOBODY, NOBODY, "cleared")


@root_only
@pytest.mark.anyio
async def test_user_and_group_may_be_numbers_and_differ() -> None:
    (seen,), status = await run(spec(user=NOBODY, group=1), ("status", None))
    assert ids(seen["Uid"]) == [NOBODY] * 4
    assert ids(seen["Gid"]) == [1] * 4
    assert seen["Groups"] == ""
    assert status["containment"]["privileges"]["gid"] == 1


@pytest.mark.anyio
async def test_no_new_privs_is_on_by_default_and_can_be_turned_off() -> None:
    if "NoNewPrivs:\t1" in Path("/proc/self/status").read_text():
        pytest.skip("the test process has no_new_privs itself: nothing to compare")
    (on,), status = await run(spec(), ("status", None))
    assert on["NoNewPrivs"] == "1"
    privs = status["containment"]["privileges"]
    assert privs["no_new_privs"] is True
    (off,), status = await run(spec(no_new_privs=False), ("status", None))
    assert off["NoNewPrivs"] == "0"
    assert status["containment"]["privileges"]["no_new_privs"] is False


@pytest.mark.anyio
async def test_status_reports_the_containment_in_effect() -> None:
    (_,), status = await run(spec(), ("status", None))
    contained = status["containment"]
    c = _platform.detect_containment()
    assert contained["mechanism"] == c.mechanism
    if c.shim is None:
        assert (contained["shim"], contained["shim_exec"]) == (None, None)
    else:
        assert contained["shim_source"] in ("packaged", "cache", "override")
        assert contained["shim_exec"] == ("memfd" if c.shim_fd is not None else "path")
        assert contained["shim"] == c.shim_path
    assert contained["privileges"]["uid"] == os.geteuid()
    assert contained["privileges"]["supplementary_groups"] == "inherited"


@needs_landlock
@pytest.mark.anyio
async def test_the_sandbox_denies_writes_outside_the_write_list(shared_tmp: Path) -> None:
    if _platform.detect_containment().shim is None:
        pytest.skip("the sandbox is applied by pvinit; no shim in this run")
    allowed, other = shared_tmp / "allowed", shared_tmp / "other"
    allowed.mkdir()
    other.mkdir()
    sandbox = Sandbox(write=(str(allowed),))
    results, status = await run(
        spec(sandbox=sandbox),
        ("write", {"path": str(allowed / "a")}),
        ("write", {"path": str(other / "b")}),
        ("write", {"path": str(shared_tmp / "c")}),
        ("read", {"path": str(allowed / "a")}),
        ("write", {"path": "/dev/null"}))
    assert results == ["ok", "EACCES", "EACCES", "ok", "ok"]
    assert (allowed / "a").read_text() == "written\n"
    assert not (other / "b").exists() and not (shared_tmp / "c").exists()
    box = status["containment"]["privileges"]["sandbox"]
    assert box["enforced"] is True and box["landlock_abi"] == ABI
    assert box["write"] == [str(allowed)] and box["read"] is None


@needs_landlock
@pytest.mark.anyio
async def test_a_read_list_denies_reads_outside_it(shared_tmp: Path) -> None:
    if _platform.detect_containment().shim is None:
        pytest.skip("the sandbox is applied by pvinit; no shim in this run")
    secret = shared_tmp / "secret"
    secret.write_text("x")
    system = [p for p in ("/usr", "/lib", "/lib64", "/etc/ld.so.cache") if os.path.exists(p)]
    sandbox = Sandbox(read=(*system, str(PLUGIN.parent)), write=())
    results, status = await run(spec(sandbox=sandbox),
                                ("read", {"path": str(secret)}),
                                ("read", {"path": str(PLUGIN)}))
    assert results == ["EACCES", "ok"]
    assert status["containment"]["privileges"]["sandbox"]["read"] == [*system,
                                                                      str(PLUGIN.parent)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.skipif(ABI < 4, reason=f"network rules need Landlock ABI 4 (here: {ABI})")
@pytest.mark.anyio
async def test_the_sandbox_limits_tcp_bind_to_the_listed_ports() -> None:
    if _platform.detect_containment().shim is None:
        pytest.skip("the sandbox is applied by pvinit; no shim in this run")
    allowed, denied = _free_port(), _free_port()
    results, status = await run(spec(sandbox=Sandbox(write=(), net_bind=(allowed,))),
                                ("bind", {"port": allowed}), ("bind", {"port": denied}))
    assert results == ["ok", "EACCES"]
    assert status["containment"]["privileges"]["sandbox"]["net_enforced"] is True


def test_not_root_and_another_user_is_refused_before_spawning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor says why; pvinit would refuse too (next test)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    c = _platform.detect_containment()
    with pytest.raises(SpawnError, match="needs the supervisor to run as root; it runs as "
                                         "uid 1000"):
        plan(Privileges(user=NOBODY), c)
    assert plan(Privileges(user=1000, group=1000), c).describe()["uid"] == 1000  # ours: fine


@root_only
def test_pvinit_not_root_refuses_another_uid(shared_tmp: Path) -> None:
    shim = _platform.ensure_shim()
    if shim is None or shutil.which("setpriv") is None:
        pytest.skip("needs the pvinit shim and setpriv")
    copy = shared_tmp / "pvinit"
    shutil.copy(shim, copy)
    copy.chmod(0o755)
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(copy),
         "--no-ns", "--parent", str(os.getpid()), "--user", "0", "--", "/bin/true"],
        capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode == 126, proc.stderr
    assert "pvinit: cannot run the plugin as uid 0" in proc.stderr
    assert "not root" in proc.stderr


@pytest.mark.anyio
async def test_an_unknown_user_fails_the_plugin_with_the_reason() -> None:
    async with Supervisor(SupervisorConfig(plugins=[spec(user="no-such-user-pv")])) as sup:
        runner = sup.runner("priv")
        await sup.wait_ready(["priv"], timeout=10)  # serving or given up on
        assert str(runner.state) == "failed"
        assert "unknown user 'no-such-user-pv'" in (runner.reason or "")


def test_the_config_file_takes_the_new_keys() -> None:
    text = """
[plugins.a]
command = ["/bin/true"]
user = "nobody"
group = 65534
sandbox = {read = ["/usr"], write = ["/tmp"], net_bind = [8080], required = true}
[plugins.b]
command = ["/bin/true"]
no_new_privs = false
"""
    config = parse(tomllib.loads(text), source="/tmp/test.toml")
    a, b = sorted(config.supervisor.plugins, key=lambda p: p.name)
    assert (a.user, a.group, a.no_new_privs) == ("nobody", 65534, True)
    assert a.sandbox == Sandbox(read=("/usr",), write=("/tmp",), net_bind=(8080,),
                                required=True)
    assert (b.user, b.no_new_privs, b.sandbox) == (None, False, None)
    with pytest.raises(ConfigError, match="sandbox needs no_new_privs"):
        parse(tomllib.loads('[plugins.c]\ncommand = ["x"]\nno_new_privs = false\n'
                            'sandbox = {write = ["/tmp"]}\n'), source="/tmp/t.toml")
    with pytest.raises(ConfigError, match="not an absolute path"):
        parse(tomllib.loads('[plugins.c]\ncommand = ["x"]\nsandbox = {write = ["rel"]}\n'),
              source="/tmp/t.toml")


# ------------------------------------------------------------------ without the shim


@pytest.fixture
def no_shim() -> Iterator[None]:
    saved = os.environ.get("PIPEVISOR_SHIM")
    os.environ["PIPEVISOR_SHIM"] = "0"
    _platform.reset_detection_cache()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PIPEVISOR_SHIM", None)
        else:
            os.environ["PIPEVISOR_SHIM"] = saved
        _platform.reset_detection_cache()


@root_only
@pytest.mark.anyio
async def test_without_the_shim_user_and_no_new_privs_still_apply(no_shim: None) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("no_new_privs without the shim needs setpriv (util-linux)")
    (seen,), status = await run(spec(user="nobody"), ("status", None))
    assert ids(seen["Uid"]) == [NOBODY] * 4 and seen["Groups"] == ""
    assert seen["NoNewPrivs"] == "1"
    privs = status["containment"]["privileges"]
    assert status["containment"]["mechanism"] == "session"
    assert (privs["no_new_privs"], privs["no_new_privs_by"]) == (True, "setpriv")


@pytest.mark.anyio
async def test_without_the_shim_a_sandbox_is_reported_not_enforced_or_refused(
        no_shim: None, caplog: pytest.LogCaptureFixture, shared_tmp: Path) -> None:
    caplog.set_level(logging.WARNING, logger="pipevisor.supervisor.proc.privileges")
    box = Sandbox(write=(str(shared_tmp),))
    _, status = await run(spec("boxed-no-shim", sandbox=box), ("status", None))
    sandbox = status["containment"]["privileges"]["sandbox"]
    assert sandbox["enforced"] is False and "no pvinit shim" in sandbox["reason"]
    lines = [r.getMessage() for r in caplog.records if "sandbox not enforced" in r.getMessage()]
    assert len(lines) == 1 and "boxed-no-shim" in lines[0]

    required = spec("boxed-required", sandbox=replace(box, required=True))
    async with Supervisor(SupervisorConfig(plugins=[required])) as sup:
        await sup.wait_ready(["boxed-required"], timeout=10)
        runner = sup.runner("boxed-required")
        assert str(runner.state) == "failed"
        assert "sandbox required but not possible" in (runner.reason or "")
