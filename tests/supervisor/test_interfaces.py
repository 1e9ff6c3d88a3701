"""Interfaces end to end, with real plugin processes: negotiation, validation, adapters,
degradation, raw mode and the start sequence."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.protocol.interfaces import How
from pipevisor.supervisor import (
    CallError,
    HealthPolicy,
    InvalidResponse,
    MethodUnavailable,
    PluginSpec,
    PluginState,
    Supervisor,
    SupervisorConfig,
)
from pipevisor.supervisor.engine.config import PluginMode, StartStep
from pipevisor.supervisor.engine.events import Subscription, SupervisorEvent
from pipevisor.supervisor.engine.interfaces import Adapter, AdapterSpec, load_interfaces
from pipevisor.supervisor.engine.policy import RestartMode, RestartPolicy
from pipevisor.supervisor.errors import ConfigError
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
VERSIONED = str(PLUGINS / "versioned_plugin.py")
PLAIN = str(PLUGINS / "plain_jsonrpc.py")


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


S = {"type": "string"}
GREET = {
    "1.0": {"params": obj(["name"], name=S), "result": obj(["text"], text=S)},
    "1.1": {"params": obj(["name"], name=S, punctuation=S),
            "result": obj(["text"], text=S, lang=S)},
    "1.2": {"params": obj(["name"], name=S, punctuation=S, loud={"type": "boolean"}),
            "result": obj(["text"], text=S, lang=S)},
}
GREET2 = {"2.0": {"params": obj(["person"], person=obj(["name"], name=S)),
                  "result": obj(["message"], message=S)}}

V2_TO_V1 = Adapter(
    to_plugin=lambda p: {"name": p["person"]["name"]},
    from_plugin=lambda r: {"message": r["text"]},
)


async def next_matching(sub: Subscription, kind: str, timeout: float) -> SupervisorEvent:
    with anyio.fail_after(timeout):
        while True:
            event = await sub.next()
            if event.kind == kind:
                return event


def adapter_factory() -> Adapter:
    """Referenced from config as 'tests.supervisor.test_interfaces:adapter_factory'."""
    return V2_TO_V1


def versioned(name: str, *flags: str, **overrides: Any) -> PluginSpec:
    return replace(fake_spec(name), command=(sys.executable, VERSIONED, *flags), **overrides)


def plain(name: str, *flags: str, **overrides: Any) -> PluginSpec:
    return replace(fake_spec(name), command=(sys.executable, PLAIN, *flags), **overrides)


def config(*specs: PluginSpec, greet: dict[str, Any] = GREET, **kw: Any) -> SupervisorConfig:
    return SupervisorConfig(plugins=specs, interfaces={"plugin": {"greet": greet}}, **kw)


async def test_handshake_offers_the_interface_versions() -> None:
    async with Supervisor(config()) as sup:
        offered = sup._handshake_params(versioned("x"), 1).to_json()["interfaces"]
    assert offered == {"greet": ["1.0", "1.1", "1.2"]}


async def test_plugin_two_minors_behind_is_down_converted() -> None:
    async with Supervisor(config(versioned("old", "--declare", "greet=1.0"))) as sup:
        await sup.wait_ready(timeout=10)
        result = await sup.call("old", "greet", {"name": "ann", "punctuation": "!",
                                                 "loud": True})
        assert result == {"text": "hello ann"}  # lang, mood dropped: 1.0 knows neither
        assert await sup.call("old", "last_params") == {"name": "ann"}
        status = sup.status()[0]
        assert status["state"] == "ready"
        assert status["interfaces"]["greet"] == {
            "how": "down-converted", "host": "1.2", "plugin": "1.0", "wire": "1.0",
            "reason": status["interfaces"]["greet"]["reason"]}
        assert status["interfaces"]["last_params"] == {
            "how": "no-interface",
            "reason": "the host has no interface for this method; not validated"}
        assert status["degradations"] == []


async def test_invalid_params_get_32602_with_the_path_and_never_reach_the_plugin() -> None:
    async with Supervisor(config(versioned("p", "--declare", "greet=1.2"))) as sup:
        await sup.call("p", "greet", {"name": "first"})
        with pytest.raises(CallError) as info:
            await sup.call("p", "greet", {"name": 42})
        assert info.value.code == ErrorCode.INVALID_PARAMS
        assert info.value.data["path"] == "$.name"
        assert "$.name" in info.value.error.message
        assert await sup.call("p", "last_params") == {"name": "first"}


async def test_call_many_checks_and_converts_each_call_through_its_interface() -> None:
    """Supervisor.call_many takes the same interface route as call: params checked and
    down-converted per call, a bad one refused alone (never sent), results checked."""
    async with Supervisor(config(versioned("old", "--declare", "greet=1.0"),
                                 versioned("bad", "--declare", "greet=1.1",
                                           "--bad-result"))) as sup:
        await sup.wait_ready(timeout=10)
        got = await sup.call_many("old", "greet", [
            {"name": "ann", "loud": True}, {"name": 42}, {"name": "bob"}], window=2)
        assert got[0] == {"text": "hello ann"} and got[2] == {"text": "hello bob"}
        assert isinstance(got[1], CallError) and got[1].code == ErrorCode.INVALID_PARAMS
        assert got[1].data["path"] == "$.name"
        assert await sup.call("old", "last_params") == {"name": "bob"}  # "loud" dropped
        bad = await sup.call_many("bad", "greet", [{"name": "x"}] * 3)
        assert all(isinstance(r, InvalidResponse) for r in bad), bad
        assert sup.runner("bad").methods.invalid_results == 3


async def test_unversioned_method_checks_params_but_not_results() -> None:
    async with Supervisor(config(versioned("u", "--declare", "greet",
                                           "--bad-result"))) as sup:
        with pytest.raises(CallError) as info:
            await sup.call("u", "greet", {})
        assert info.value.code == ErrorCode.INVALID_PARAMS
        assert "'name' is a required property" in info.value.error.message
        assert await sup.call("u", "greet", {"name": "x"}) == {"text": 42}
        assert sup.status()[0]["interfaces"]["greet"]["how"] == "unversioned"


async def test_validation_can_be_switched_off() -> None:
    spec = versioned("p", "--declare", "greet=1.2", validate_params=False,
                     validate_results=False)
    async with Supervisor(config(spec)) as sup:
        await sup.call("p", "greet", {"name": 42})
        assert await sup.call("p", "last_params") == {"name": 42}


async def test_plugin_violating_its_schema_gives_a_clear_error_and_is_counted() -> None:
    async with Supervisor(config(versioned("bad", "--declare", "greet=1.1",
                                           "--bad-result"))) as sup:
        async with sup.subscribe() as events:
            with pytest.raises(InvalidResponse) as info:
                await sup.call("bad", "greet", {"name": "x"})
            assert info.value.code == ErrorCode.INVALID_RESULT
            assert "$.text" in str(info.value) and "1.1" in str(info.value)
            with pytest.raises(InvalidResponse):
                await sup.call("bad", "greet", {"name": "x"})
            event = await next_matching(events, "invalid_result", 5)
            assert event.detail["path"] == "$.text"
        assert sup.status()[0]["invalid_results"] == 2
        assert await sup.call("bad", "plain", [1]) == [1]  # the rest keeps working


async def test_major_behind_without_adapter_degrades_only_that_method() -> None:
    greet = {**GREET, **GREET2}
    async with Supervisor(config(versioned("v1", "--declare", "greet=1.1",
                                           "--declare", "plain"), greet=greet)) as sup:
        runner = sup.runner("v1")
        await runner.wait_state({PluginState.DEGRADED}, 10)
        with pytest.raises(MethodUnavailable) as info:
            await sup.call("v1", "greet", {"person": {"name": "x"}})
        assert info.value.code == ErrorCode.METHOD_UNAVAILABLE
        assert "1.1" in str(info.value) and "2.0" in str(info.value)
        assert info.value.data["hostVersion"] == "2.0"
        assert info.value.data["pluginVersion"] == "1.1"
        assert await sup.call("v1", "plain", {"still": "works"}) == {"still": "works"}
        status = sup.status()[0]
        assert status["state"] == "degraded"
        assert [d["method"] for d in status["degradations"]] == ["greet"]
        assert "greet" in (runner.reason or "")


async def test_major_behind_with_adapter_registered_in_code() -> None:
    greet = {**GREET, **GREET2}
    async with Supervisor(config(versioned("v1", "--declare", "greet=1.1"),
                                 greet=greet)) as sup:
        sup.register_adapter("greet", 2, 1, V2_TO_V1)
        sup.restart("v1")  # negotiation happens at the handshake
        await sup.runner("v1").wait_state({PluginState.READY}, 10)
        assert await sup.call("v1", "greet", {"person": {"name": "bo"}}) == {
            "message": "hello bo"}
        assert await sup.call("v1", "last_params") == {"name": "bo"}
        assert sup.status()[0]["interfaces"]["greet"]["how"] == str(How.ADAPTER)


async def test_major_behind_with_adapter_from_config() -> None:
    greet = {**GREET, **GREET2}
    cfg = config(versioned("v1", "--declare", "greet=1.0"), greet=greet,
                 adapters=[AdapterSpec("greet", 2, 1,
                                       "tests.supervisor.test_interfaces:adapter_factory")])
    async with Supervisor(cfg) as sup:
        assert await sup.call("v1", "greet", {"person": {"name": "cy"}}) == {
            "message": "hello cy"}


async def test_adapter_config_errors_name_the_adapter() -> None:
    for target, fault in [("nomodule", "module:attribute"),
                          ("no_such_mod_xyz:f", "cannot import"),
                          ("tests.supervisor.test_interfaces:missing", "no attribute"),
                          ("tests.supervisor.test_interfaces:GREET", "neither an Adapter")]:
        with pytest.raises(ConfigError, match=fault) as info:
            Supervisor(config(adapters=[AdapterSpec("greet", 2, 1, target)]))
        assert "greet 2->1" in str(info.value)


async def test_a_failing_adapter_answers_the_call_and_blames_the_adapter() -> None:
    def broken(params: Any) -> Any:
        raise KeyError("person")

    greet = {**GREET, **GREET2}
    async with Supervisor(config(versioned("v1", "--declare", "greet=1.1", autostart=False),
                                 greet=greet)) as sup:
        sup.register_adapter("greet", 2, 1, Adapter(broken, lambda r: r))
        sup.start("v1")
        await sup.wait_ready(timeout=10)
        with pytest.raises(CallError) as info:
            await sup.call("v1", "greet", {"person": {"name": "x"}})
        assert info.value.code == ErrorCode.INTERNAL_ERROR
        assert "adapter for greet 2.0->1.1 failed" in str(info.value)
        assert await sup.call("v1", "last_params") is None  # the plugin never saw it
        assert sup.status()[0]["invalid_results"] == 0


async def test_notifications_to_a_disabled_method_are_refused() -> None:
    async with Supervisor(config(versioned("v3", "--declare", "greet=3.0"))) as sup:
        await sup.wait_ready(timeout=10)
        with pytest.raises(MethodUnavailable):
            await sup.notify("v3", "greet", {"name": "x"})
        with pytest.raises(CallError) as info:
            await sup.call("v3", "greet", {"name": 1})
        assert info.value.code == ErrorCode.METHOD_UNAVAILABLE  # disabled wins over params


async def test_without_interfaces_every_method_shows_as_unchecked() -> None:
    async with Supervisor([versioned("p", "--declare", "greet=1.0")]) as sup:
        await sup.wait_ready(timeout=10)
        assert sup.runner("p").methods.routes == {}
        status = sup.status()[0]
        assert status["methods"]["greet"] == "1.0"
        assert status["interfaces"]["greet"] == {"how": "no-interface"}
        assert await sup.call("p", "greet", {"name": 1}) == {
            "text": "hello 1", "lang": "en", "mood": "newer"}


async def test_major_ahead_is_disabled_and_reported() -> None:
    async with Supervisor(config(versioned("v3", "--declare", "greet=3.0"))) as sup:
        await sup.runner("v3").wait_state({PluginState.DEGRADED}, 10)
        with pytest.raises(MethodUnavailable, match=r"3\.0"):
            await sup.call("v3", "greet", {"name": "x"})
        assert await sup.call("v3", "pid") > 0


async def test_host_method_params_are_validated() -> None:
    cfg = SupervisorConfig(plugins=[fake_spec("f")],
                           interfaces={"host": {"store": {
                               "1.0": {"params": obj(["key"], key=S), "result": S}}}})
    async with Supervisor(cfg) as sup:
        @sup.host_method("store")
        async def store(key: str) -> str:
            return "stored " + key

        await sup.wait_ready(timeout=10)
        assert await sup.call("f", "call_host", {"method": "store",
                                                 "params": {"key": "k"}}) == "stored k"
        answer = await sup.call("f", "call_host", {"method": "store", "params": {"key": 1}})
        assert answer["code"] == ErrorCode.INVALID_PARAMS and "$.key" in answer["message"]
        offered = sup._handshake_params(fake_spec("f"), 1).to_json()["hostMethods"]
        assert offered == {"store": ["1.0"]}


# ============================================================ interface files


def write(root: Path, rel: str, doc: Any) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_folder_layout_loads_nested_method_names(tmp_path: Path) -> None:
    write(tmp_path, "plugin/text/greet/1.0.json", GREET["1.0"])
    write(tmp_path, "plugin/text/greet/1.1.json", GREET["1.1"])
    write(tmp_path, "host/store/1.0.json", {"params": True, "result": True})
    loaded = load_interfaces(tmp_path)
    assert loaded.offer() == {"text/greet": ("1.0", "1.1")}
    assert list(loaded.host) == ["store"]


@pytest.mark.parametrize("rel, doc, fault", [
    ("plugin/greet/1.0.json", "{not json", "not valid JSON"),
    ("plugin/greet/1.0.json", {"params": {"type": 7}, "result": True},
     "params is not a valid JSON Schema"),
    ("plugin/greet/v1.json", {"params": True, "result": True}, "MAJOR.MINOR"),
    ("plugin/greet/1.0.yaml", "x", "not a .json interface file"),
    ("plugins/greet/1.0.json", {"params": True, "result": True}, "only the folders"),
    ("plugin/1.0.json", {"params": True, "result": True}, "folder named after the method"),
])
async def test_malformed_interface_file_names_the_file(tmp_path: Path, rel: str, doc: Any,
                                                 fault: str) -> None:
    write(tmp_path, rel, doc)
    with pytest.raises(ConfigError, match=fault) as info:
        Supervisor(SupervisorConfig(interfaces=str(tmp_path)))
    at_fault = tmp_path / ("plugins" if rel.startswith("plugins/") else rel)
    assert str(at_fault) in str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_interfaces(tmp_path / "nope")


# ============================================================ raw mode


async def test_no_handshake_server_runs_in_raw_mode_after_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    async with Supervisor([plain("plain")]) as sup:
        runner = sup.runner("plain")
        await runner.wait_state({PluginState.DEGRADED}, 10)
        assert "raw mode" in (runner.reason or "") and "-32601" in (runner.reason or "")
        assert await sup.call("plain", "echo", {"a": [1]}) == {"a": [1]}
        status = sup.status()[0]
        assert status["mode"] == "raw" and status["protocol_version"] is None
        assert status["degradations"][0]["reason"].startswith("raw mode")
    assert any("raw mode" in r.message for r in caplog.records if r.levelname == "WARNING")


async def test_a_server_answering_the_handshake_with_junk_runs_raw() -> None:
    async with Supervisor([plain("any", "--answer-anything")]) as sup:
        runner = sup.runner("any")
        await runner.wait_state({PluginState.DEGRADED}, 10)
        assert "not a pipevisor handshake result" in (runner.reason or "")
        assert await sup.call("any", "whatever", {"x": 1}) == {"x": 1}


async def test_a_server_silent_on_unknown_methods_is_pointed_at_raw_mode() -> None:
    """Silence cannot be told from a slow plugin, so auto mode restarts it under the
    policy; the reason says what to configure, and mode raw then serves it."""
    health = HealthPolicy(handshake_timeout=0.3)
    policy = RestartPolicy(max_restarts=1, within_seconds=60, initial_delay=0)
    async with Supervisor([plain("quiet", "--silent-unknown", health=health,
                                 restart=policy),
                           plain("raw", "--silent-unknown", mode=PluginMode.RAW)]) as sup:
        runner = sup.runner("quiet")
        await runner.wait_state({PluginState.FAILED}, 20)
        assert "no answer to the handshake" in (runner.reason or "")
        assert 'mode = "raw"' in (runner.reason or "")
        assert await sup.call("raw", "echo", {"ok": True}, timeout=10) == {"ok": True}


async def test_mode_pipevisor_refuses_a_server_without_handshake() -> None:
    async with Supervisor([plain("plain", mode=PluginMode.PIPEVISOR)]) as sup:
        runner = sup.runner("plain")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert runner.tracker.total_restarts == 0
        assert "does not speak the pipevisor protocol" in (runner.reason or "")  # [M-6.5b]


async def test_stateful_server_gets_its_start_sequence_again_after_a_restart() -> None:
    steps = (StartStep("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}}),
             StartStep("notifications/initialized", notify=True))
    spec = plain("mcp", "--require-init", mode="raw", start_sequence=steps,
                 health=HealthPolicy(ping_interval=0.05, handshake_timeout=10))
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=10)
        assert await sup.call("mcp", "initialized") is True
        with pytest.raises(CallError):
            await sup.call("mcp", "crash")
        assert await sup.call("mcp", "initialized", timeout=10) is True
        assert await sup.call("mcp", "echo", ["after restart"]) == ["after restart"]
        assert sup.runner("mcp").instance == 2
        assert sup.runner("mcp").faults == 0  # raw mode sends no pings it would refuse


async def test_without_the_start_sequence_the_stateful_server_refuses() -> None:
    async with Supervisor([plain("mcp", "--require-init", mode="raw")]) as sup:
        with pytest.raises(CallError) as info:
            await sup.call("mcp", "echo", [1])
        assert info.value.code == -32002


async def test_a_failing_start_sequence_step_is_reported() -> None:
    spec = plain("mcp", "--require-init", mode="raw",
                 start_sequence=(StartStep("echo", [1]),),
                 restart=RestartPolicy(mode=RestartMode.NEVER), autostart=False)
    async with Supervisor([spec]) as sup, sup.subscribe() as events:
        sup.start("mcp")
        with anyio.fail_after(10):
            while (await next_matching(events, "state", 10)).detail["to"] != "stopped":
                pass
        assert "start sequence step 1 (echo) failed" in (sup.runner("mcp").reason or "")


async def test_output_that_is_not_json_is_reported_and_not_retried() -> None:
    spec = plain("noise", "--banner", "Welcome to NoiseTool 3.1",
                 health=HealthPolicy(handshake_timeout=0.5, ping_interval=0))
    async with Supervisor([spec]) as sup:
        runner = sup.runner("noise")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert "Welcome to NoiseTool" in (runner.reason or "")
        assert runner.tracker.total_restarts == 0


async def test_exiting_at_once_with_non_json_output_reports_bytes_and_code() -> None:
    spec = plain("noise", "--banner", "usage: tool [-h]", "--exit-at-once", "2")
    async with Supervisor([spec]) as sup:
        runner = sup.runner("noise")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert "usage: tool" in (runner.reason or "")
        assert "code 2" in (runner.reason or "")
        assert runner.tracker.total_restarts == 0


async def test_protocol_ranges_without_overlap_fail_naming_both() -> None:
    async with Supervisor([versioned("future", "--protocol", "2.0")]) as sup:
        runner = sup.runner("future")
        await runner.wait_state({PluginState.FAILED}, 10)
        assert "2.0" in (runner.reason or "") and "1.0" in (runner.reason or "")
        assert runner.tracker.total_restarts == 0


# ============================================================ the example


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "interfaces"


@pytest.mark.parametrize("with_adapter", [False, True])
async def test_the_interfaces_example(with_adapter: bool, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    cfg = SupervisorConfig(
        plugins=[PluginSpec(n, (sys.executable, str(EXAMPLE / f"pipevisor-{n}")))
                 for n in ("greeter-v1", "greeter-v2")],
        interfaces=str(EXAMPLE / "interfaces"),
        adapters=[AdapterSpec("greet", 2, 1, "greet_adapters:v2_to_v1")] if with_adapter else [])
    params = {"who": {"name": "Ada", "title": "Dr."}}
    async with Supervisor(cfg) as sup:
        await sup.wait_ready(timeout=10)
        assert await sup.call("greeter-v2", "greet", params) == {
            "greeting": "Good day, Dr. Ada.", "language": "en"}
        assert "v1" in await sup.call("greeter-v1", "about")
        v1 = sup.runner("greeter-v1")
        if with_adapter:
            assert v1.state is PluginState.READY
            assert await sup.call("greeter-v1", "greet", params) == {
                "greeting": "Hello, Dr. Ada.", "language": "en"}
            assert any("deprecated" in r.message for r in caplog.records)
        else:
            assert v1.state is PluginState.DEGRADED
            with pytest.raises(MethodUnavailable):
                await sup.call("greeter-v1", "greet", params)
