"""Host methods across versions (protocol/host_methods.py, SPEC section 8): a plugin
declares the version of each host method it calls; older and newer minors are
down-converted both ways, another major disables just that host method (the plugin
is degraded, its own methods keep working), and a plugin that declares nothing keeps
the old behaviour. Real plugins (tests/plugins/fake_plugin.py --uses) calling the
host through a real supervisor."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.protocol.host_methods import negotiate_host_call
from pipevisor.protocol.interfaces import How, InterfaceSet
from pipevisor.protocol.versions import Version
from pipevisor.supervisor import PluginState, Supervisor, SupervisorConfig
from pipevisor.supervisor.engine.interfaces import Adapter, AdapterSpec
from pipevisor.supervisor.errors import ConfigError
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

S = {"type": "string"}


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


LOOKUP = {
    "1.0": {"params": obj(["key"], key=S), "result": obj(["value"], value=S)},
    "1.1": {"params": obj(["key"], key=S, default=S),
            "result": obj(["value"], value=S, found={"type": "boolean"})},
    # an old major the host still describes, so a 0.x plugin's side can be checked
    "0.3": {"params": obj(["name"], name=S), "result": obj(["v"], v=S)},
}
INTERFACES = {"host": {"lookup": LOOKUP}}

OLD_LOOKUP = Adapter(
    to_plugin=lambda result: {"v": result["value"], "ignored": True},  # host 1.x -> 0.x
    from_plugin=lambda params: {"key": params["name"]},  # plugin 0.x -> host 1.x
)


def old_lookup_adapter() -> Adapter:
    """Named in config as 'tests.supervisor.test_host_method_versions:old_lookup_adapter'."""
    return OLD_LOOKUP


def supervisor(*uses: str, name: str = "p", adapters: tuple[AdapterSpec, ...] = ()
               ) -> Supervisor:
    spec = fake_spec(name)
    spec = replace(spec, command=(*spec.command, *(f"--uses={u}" for u in uses)))
    sup = Supervisor(SupervisorConfig(plugins=[spec], interfaces=INTERFACES,
                                      adapters=adapters))
    seen: list[dict[str, Any]] = []

    @sup.host_method("lookup", version="1.1")
    async def lookup(key: str, default: str | None = None) -> dict[str, Any]:
        seen.append({"key": key, "default": default})
        return {"value": key.upper(), "found": True}

    sup.seen = seen  # type: ignore[attr-defined]
    return sup


async def ask(sup: Supervisor, params: Any, plugin: str = "p") -> Any:
    return await sup.call(plugin, "call_host", {"method": "lookup", "params": params},
                          timeout=10)


async def test_an_older_plugin_gets_results_it_understands() -> None:
    sup = supervisor("lookup=1.0")
    async with sup:
        await sup.wait_ready(timeout=10)
        runner = sup.runner("p")
        assert runner.state is PluginState.READY
        assert await ask(sup, {"key": "a"}) == {"value": "A"}  # "found" is 1.1's
        status = runner.status()
        assert status["host_methods"]["lookup"]["how"] == "down-converted"
        assert status["host_methods"]["lookup"]["wire"] == "1.0"


async def test_a_newer_plugin_has_its_newer_params_dropped() -> None:
    sup = supervisor("lookup=1.3")
    async with sup:
        await sup.wait_ready(timeout=10)
        got = await ask(sup, {"key": "b", "default": "z", "since": "1.3"})
        assert got == {"value": "B", "found": True}
        # the host's function never saw the member it does not know
        assert sup.seen == [{"key": "b", "default": "z"}]  # type: ignore[attr-defined]


async def test_another_major_disables_only_that_host_method() -> None:
    sup = supervisor("lookup=2.0")
    async with sup:
        runner = sup.runner("p")
        await runner.wait_state({PluginState.DEGRADED}, 10)
        assert "host method lookup disabled" in (runner.reason or "")
        answer = await ask(sup, {"key": "a"})
        assert answer["code"] == ErrorCode.METHOD_UNAVAILABLE
        assert "2.0" in answer["message"] and "1.1" in answer["message"]
        assert await sup.call("p", "echo", {"still": "works"}) == {"still": "works"}
        degradations = runner.status()["degradations"]
        assert degradations == [{"method": "lookup", "host_method": True,
                                 "reason": runner.host_bindings["lookup"].reason}]
        assert sup.seen == []  # type: ignore[attr-defined]


async def test_an_adapter_from_config_bridges_an_old_major() -> None:
    spec = AdapterSpec("lookup", 1, 0, "tests.supervisor.test_host_method_versions:"
                       "old_lookup_adapter", direction="host")
    sup = supervisor("lookup=0.3", adapters=(spec,))
    async with sup:
        await sup.wait_ready(timeout=10)
        runner = sup.runner("p")
        assert runner.state is PluginState.READY
        assert runner.status()["host_methods"]["lookup"]["how"] == "adapter"
        # 0.x params in, the host's handler sees 1.x; its 1.x result goes back as 0.x,
        # pruned to what 0.3 declares
        assert await ask(sup, {"name": "e"}) == {"v": "E"}
        assert sup.seen == [{"key": "e", "default": None}]  # type: ignore[attr-defined]
        # the plugin's own major is checked before converting
        bad = await ask(sup, {"name": 5})
        assert bad["code"] == ErrorCode.INVALID_PARAMS and "$.name" in bad["message"]


async def test_a_failing_host_method_adapter_answers_minus_32603_and_blames_itself() -> None:
    def broken(params: Any) -> Any:
        raise KeyError("name")

    sup = supervisor("lookup=0.3")
    sup.register_adapter("lookup", 1, 0, Adapter(lambda r: r, broken), direction="host")
    async with sup:
        await sup.wait_ready(timeout=10)
        answer = await ask(sup, {"name": "f"})
        assert answer["code"] == ErrorCode.INTERNAL_ERROR
        assert "host-method adapter for lookup failed on params" in answer["message"]
        assert sup.seen == []  # type: ignore[attr-defined]  # the handler never ran
        assert await sup.call("p", "echo", {"still": 1}) == {"still": 1}


async def test_a_plugin_method_adapter_does_not_bridge_a_host_method() -> None:
    spec = AdapterSpec("lookup", 1, 0, "tests.supervisor.test_host_method_versions:"
                       "old_lookup_adapter")  # direction defaults to "plugin"
    sup = supervisor("lookup=0.3", adapters=(spec,))
    async with sup:
        runner = sup.runner("p")
        await runner.wait_state({PluginState.DEGRADED}, 10)
        assert "no host-method adapter 1->0" in (runner.reason or "")


def test_an_adapter_direction_is_checked() -> None:
    with pytest.raises(ConfigError, match="direction"):
        AdapterSpec("lookup", 1, 0, "x:y", direction="sideways")


async def test_a_host_method_the_host_does_not_serve_degrades_the_plugin() -> None:
    sup = supervisor("lookup=1.1", "blob.read=1.0")
    async with sup:
        runner = sup.runner("p")
        await runner.wait_state({PluginState.DEGRADED}, 10)
        assert "blob.read" in (runner.reason or "") and "does not serve" in (runner.reason or "")
        assert await ask(sup, {"key": "c"}) == {"value": "C", "found": True}  # exact


async def test_without_a_declaration_params_are_checked_at_the_current_version() -> None:
    sup = supervisor()
    async with sup:
        await sup.wait_ready(timeout=10)
        assert sup.runner("p").host_bindings == {}
        assert await ask(sup, {"key": "d"}) == {"value": "D", "found": True}
        refused = await ask(sup, {"key": "d", "since": "1.3"})
        assert refused["code"] == ErrorCode.INVALID_PARAMS


def test_negotiation_table() -> None:
    iface = InterfaceSet.from_documents(INTERFACES).host["lookup"]
    v = Version.parse
    assert negotiate_host_call(iface, "lookup", v("1.1"), True).how is How.EXACT
    older = negotiate_host_call(iface, "lookup", v("1.0"), True)
    assert older.how is How.DOWN_CONVERTED and str(older.wire) == "1.0"
    assert older.result_out({"value": "x", "found": True}) == {"value": "x"}
    newer = negotiate_host_call(iface, "lookup", v("1.4"), True)
    assert str(newer.wire) == "1.1" and newer.params_in({"key": "k", "x": 1}) == {"key": "k"}
    assert negotiate_host_call(iface, "lookup", v("0.9"), True).how is How.DISABLED
    assert negotiate_host_call(None, "other", v("1.0"), True).how is How.NO_INTERFACE
    assert negotiate_host_call(None, "other", v("1.0"), False).how is How.DISABLED
    assert negotiate_host_call(iface, "lookup", None, True).how is How.UNVERSIONED
