"""PATH discovery on a real temporary file tree (no mocks: real modes, links, folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipevisor.supervisor.tools.discovery import DiscoveryConfig, FoundPlugin, discover


def _exe(folder: Path, name: str, mode: int = 0o755) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(mode)
    return p


def _reasons(result: object) -> dict[str, str]:
    return {w.path: w.reason for w in result.warnings}  # type: ignore[attr-defined]


def test_finds_prefixed_executables_on_path(tmp_path: Path) -> None:
    a = _exe(tmp_path / "a", "pipevisor-echo")
    _exe(tmp_path / "a", "other-tool")
    b = _exe(tmp_path / "b", "pipevisor-greet")
    r = discover(path=f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert r.found == (FoundPlugin("echo", str(a)), FoundPlugin("greet", str(b)))
    assert r.shadowed == () and r.warnings == ()


def test_first_on_path_wins_and_later_ones_are_shadowed(tmp_path: Path) -> None:
    first = _exe(tmp_path / "a", "pipevisor-echo")
    second = _exe(tmp_path / "b", "pipevisor-echo")
    r = discover(path=f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert [p.path for p in r.found] == [str(first)]
    assert len(r.shadowed) == 1
    s = r.shadowed[0]
    assert (s.name, s.path, s.shadowed_by) == ("echo", str(second), str(first))


def test_extra_dirs_come_before_path(tmp_path: Path) -> None:
    on_path = _exe(tmp_path / "p", "pipevisor-echo")
    extra = _exe(tmp_path / "x", "pipevisor-echo")
    r = discover(DiscoveryConfig(dirs=(str(tmp_path / "x"),)), path=str(tmp_path / "p"))
    assert r.found[0].path == str(extra)
    assert r.shadowed[0].path == str(on_path)


def test_use_path_false_ignores_path(tmp_path: Path) -> None:
    _exe(tmp_path / "p", "pipevisor-echo")
    r = discover(DiscoveryConfig(use_path=False), path=str(tmp_path / "p"))
    assert r.found == ()


def test_custom_prefix(tmp_path: Path) -> None:
    _exe(tmp_path / "p", "pipevisor-echo")
    mine = _exe(tmp_path / "p", "myapp-echo")
    r = discover(DiscoveryConfig(prefix="myapp-"), path=str(tmp_path / "p"))
    assert r.found == (FoundPlugin("echo", str(mine)),)


def test_same_folder_twice_is_not_shadowing_itself(tmp_path: Path) -> None:
    _exe(tmp_path / "p", "pipevisor-echo")
    (tmp_path / "link").symlink_to(tmp_path / "p")
    r = discover(path=os.pathsep.join([str(tmp_path / "p"), str(tmp_path / "link"),
                                       str(tmp_path / "p")]))
    assert len(r.found) == 1 and r.shadowed == ()


def test_unusable_candidates_are_skipped_with_a_reason(tmp_path: Path) -> None:
    d = tmp_path / "p"
    ok = _exe(d, "pipevisor-ok")
    noexec = _exe(d, "pipevisor-noexec", 0o644)
    ww = _exe(d, "pipevisor-ww", 0o755)
    ww.chmod(0o777)  # umask may have dropped o+w at creation
    (d / "pipevisor-dir").mkdir()
    (d / "pipevisor-broken").symlink_to(d / "nowhere")
    bad = _exe(d, "pipevisor-bad name")
    empty = _exe(d, "pipevisor-")
    r = discover(path=str(d))
    assert r.found == (FoundPlugin("ok", str(ok)),)
    reasons = _reasons(r)
    assert "not executable" in reasons[str(noexec)]
    assert "world-writable" in reasons[str(ww)]
    assert "directory" in reasons[str(d / "pipevisor-dir")]
    assert "broken symbolic link" in reasons[str(d / "pipevisor-broken")]
    assert "not a valid plugin name" in reasons[str(bad)]
    assert "not a valid plugin name" in reasons[str(empty)]


def test_a_valid_symlink_to_an_executable_is_found(tmp_path: Path) -> None:
    target = _exe(tmp_path / "real", "echo-impl")
    (tmp_path / "p").mkdir()
    link = tmp_path / "p" / "pipevisor-echo"
    link.symlink_to(target)
    r = discover(path=str(tmp_path / "p"))
    assert r.found == (FoundPlugin("echo", str(link)),)


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_world_writable_folder_is_not_searched_sticky_or_not(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "open"
    _exe(d, "pipevisor-planted")
    d.chmod(mode)
    try:
        r = discover(path=str(d))
    finally:
        d.chmod(0o755)
    assert r.found == ()
    assert "world-writable" in _reasons(r)[str(d)]


def test_empty_and_relative_path_entries_are_warned_about(tmp_path: Path) -> None:
    _exe(tmp_path / "p", "pipevisor-echo")
    r = discover(path=os.pathsep.join(["", "bin", str(tmp_path / "p")]))
    assert [p.name for p in r.found] == ["echo"]
    reasons = _reasons(r)
    assert "empty PATH entry" in reasons[""]
    assert "relative PATH entry" in reasons["bin"]


def test_missing_path_folders_are_silent_but_missing_extra_dirs_warn(tmp_path: Path) -> None:
    r = discover(DiscoveryConfig(dirs=(str(tmp_path / "gone"),)), path=str(tmp_path / "nope"))
    assert r.found == ()
    assert list(_reasons(r)) == [str(tmp_path / "gone")]
    assert "does not exist" in r.warnings[0].reason


def test_empty_path_finds_nothing_without_warnings() -> None:
    r = discover(path="")
    assert r.found == () and r.warnings == ()


def test_path_defaults_to_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _exe(tmp_path / "p", "pipevisor-envfound")
    monkeypatch.setenv("PATH", str(tmp_path / "p"))
    assert discover().found == (FoundPlugin("envfound", str(exe)),)


def test_to_json_shape(tmp_path: Path) -> None:
    _exe(tmp_path / "a", "pipevisor-echo")
    _exe(tmp_path / "b", "pipevisor-echo")
    _exe(tmp_path / "b", "pipevisor-x", 0o644)
    r = discover(path=f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}").to_json()
    assert set(r) == {"found", "shadowed", "warnings"}
    assert r["found"] == [{"name": "echo", "path": str(tmp_path / "a" / "pipevisor-echo")}]
    assert r["shadowed"][0]["shadowed_by"] == str(tmp_path / "a" / "pipevisor-echo")
    assert r["warnings"][0]["path"] == str(tmp_path / "b" / "pipevisor-x")


def test_bad_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        DiscoveryConfig(prefix="")


# ------------------------------------------------------------------ trust (#14 item 5)

OTHER_UID = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def test_a_group_writable_folder_or_file_is_not_trusted(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    _exe(shared, "pipevisor-a")
    shared.chmod(0o775)
    own = tmp_path / "own"
    loose = _exe(own, "pipevisor-b", 0o775)
    r = discover(path=f"{shared}{os.pathsep}{own}")
    assert r.found == ()
    reasons = _reasons(r)
    assert "writable by its group" in reasons[str(shared)]
    assert "writable by its group" in reasons[str(loose)]


def test_a_trusted_group_may_write(tmp_path: Path) -> None:
    from pipevisor.supervisor.proc.trust import TrustRule

    shared = tmp_path / "shared"
    exe = _exe(shared, "pipevisor-a", 0o775)
    shared.chmod(0o775)
    rule = TrustRule.default(group=shared.stat().st_gid)
    r = discover(DiscoveryConfig(trust=rule), path=str(shared))
    assert r.found == (FoundPlugin("a", str(exe)),)


@needs_root
def test_a_plugin_or_folder_of_another_user_is_not_trusted(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    _exe(theirs, "pipevisor-a")
    os.chown(theirs, OTHER_UID, -1)
    mixed = tmp_path / "mixed"
    planted = _exe(mixed, "pipevisor-b")
    os.chown(planted, OTHER_UID, -1)
    r = discover(path=f"{theirs}{os.pathsep}{mixed}")
    assert r.found == ()
    reasons = _reasons(r)
    assert f"owned by uid {OTHER_UID}" in reasons[str(theirs)]
    assert f"owned by uid {OTHER_UID}" in reasons[str(planted)]


@needs_root
def test_a_symlink_into_another_users_file_is_not_trusted(tmp_path: Path) -> None:
    theirs = _exe(tmp_path / "theirs", "tool")
    os.chown(theirs, OTHER_UID, -1)
    mine = tmp_path / "mine"
    mine.mkdir()
    link = mine / "pipevisor-tool"
    link.symlink_to(theirs)
    r = discover(path=str(mine))
    assert r.found == ()
    assert str(theirs) in _reasons(r)[str(link)]
