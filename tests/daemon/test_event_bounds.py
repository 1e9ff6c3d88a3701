"""Event subscribers bounded in bytes, not only in count (issue #13, 5b): the hub's
queues with fabricated events, and an embedded subscriber that does not read while a
real plugin sends 300 x 1 MiB notifications (the test process's RSS measured)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import anyio
import orjson
import psutil
import pytest

from pipevisor.supervisor import Supervisor
from pipevisor.supervisor.engine.events import (
    EventHub,
    Subscription,
    SubscriptionLagged,
    SupervisorEvent,
)
from tests.daemon.hostile_helpers import BLASTER
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

MiB = 1 << 20


# ============================================================ event hub (embedded)


def _event(kind: str, size: int, i: int = 0) -> SupervisorEvent:
    return SupervisorEvent("p", kind, {"i": i, "blob": "z" * size})


async def test_a_subscription_is_bounded_in_bytes_and_keeps_the_newest() -> None:
    hub = EventHub()
    async with hub.subscribe(1000, max_bytes=3 * MiB) as sub:
        for i in range(100):
            hub.publish(_event("notification", MiB, i))
        assert sub.queued_bytes <= 3 * MiB
        assert sub.dropped >= 97
        got = [(await sub.next()).detail["i"] for _ in range(len(sub._queue))]
        assert got[-1] == 99 and got == sorted(got)
        # one event larger than the whole budget is still delivered, alone
        hub.publish(_event("log", 5 * MiB))
        assert (await sub.next()).kind == "log"
        assert sub.queued_bytes == 0


async def test_a_subscription_with_on_lag_is_ended_not_trimmed() -> None:
    hub = EventHub()
    told: list[int] = []
    async with hub.subscribe(10, max_bytes=MiB, on_lag=told.append,
                             wants=lambda e: e.kind != "stderr") as sub:
        for i in range(1000):
            hub.publish(_event("stderr", 10, i))  # filtered before queueing: costs nothing
        assert sub.queued_bytes == 0 and sub.dropped == 0
        for i in range(11):
            hub.publish(_event("log", 10, i))
        assert told == [11] and sub.lagged and sub.queued_bytes == 0
        with pytest.raises(SubscriptionLagged) as lagged:
            await sub.next()
        assert lagged.value.dropped == 11


async def test_an_embedded_subscriber_that_does_not_read_holds_a_bounded_amount(
        sock_dir: str) -> None:
    """The host's own subscriber (``async with sup.subscribe()``) loses the oldest events
    and is told how many; 300 x 1 MiB notifications used to be held in full (~300 MB)."""
    script = os.path.join(sock_dir, "blaster.py")
    await anyio.Path(script).write_text(BLASTER)
    spec = replace(fake_spec("blaster"), command=(sys.executable, script))
    me = psutil.Process()
    async with Supervisor([spec]) as sup:
        await sup.wait_ready(timeout=20)
        async with sup.subscribe() as events:
            assert isinstance(events, Subscription)
            before = me.memory_info().rss
            assert await sup.call("blaster", "blast", {"count": 300, "size": MiB},
                                  timeout=60) == "blasted"
            grown = me.memory_info().rss - before
            print(f"test process RSS growth with an idle embedded subscriber: "
                  f"{grown / MiB:.1f} MiB")
            assert grown < 48 * MiB
            assert events.dropped >= 280
            assert events.queued_bytes <= events.max_bytes
            last = None
            while events._queue:
                ev = await events.next()
                if ev.kind == "notification":
                    last = ev.detail["params"]["i"]
            assert last == 299  # the newest are the ones kept


def test_an_unknown_kind_is_refused_instead_of_waiting_forever(sock_dir: str) -> None:
    """`pipevisor events --kind bogus` used to be accepted and wait for nothing."""
    import subprocess

    from pipevisor.supervisor.client import Client, ControlError
    from tests.daemon.daemon_helpers import ROOT, fake_table, running_daemon

    with running_daemon(sock_dir, fake_table("alpha")) as d:
        with (Client(d.socket) as c, pytest.raises(ControlError, match="unknown event kind"),
              c.subscribe(kinds=["bogus"])):
            pass
        proc = subprocess.run([sys.executable, "-m", "pipevisor.supervisor", "events",
                               "--kind", "bogus", "--socket", d.socket],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert proc.returncode == 2 and "state, stderr" in proc.stderr, proc.stderr


async def test_a_late_subscriber_gets_the_kept_history_then_live_events() -> None:
    """#19 (`events --since`): the hub keeps its last events (bounded, stderr lines
    left out); a subscription with since= gets those from then first, none twice."""
    from pipevisor.supervisor.engine.events import RECENT_EVENTS

    hub = EventHub()
    for i in range(RECENT_EVENTS + 50):
        hub.publish(SupervisorEvent("p", "log", {"i": i}, time=1000.0 + i))
    hub.publish(SupervisorEvent("p", "stderr", {"line": "not kept"}, time=5000.0))
    kept = hub.recent(0)
    assert len(kept) == RECENT_EVENTS and kept[0].detail["i"] == 50  # oldest went first
    assert all(e.kind != "stderr" for e in kept)
    async with hub.subscribe(since=1000.0 + RECENT_EVENTS + 40) as sub:
        hub.publish(SupervisorEvent("p", "log", {"i": "live"}, time=9000.0))
        got = [(await sub.next()).detail["i"] for _ in range(11)]
    assert got == [*range(RECENT_EVENTS + 40, RECENT_EVENTS + 50), "live"]


def test_events_since_shows_what_happened_before_the_command(sock_dir: str) -> None:
    import subprocess

    from pipevisor.supervisor.client import Client
    from tests.daemon.daemon_helpers import ROOT, fake_table, running_daemon

    with running_daemon(sock_dir, fake_table("alpha")) as d:
        with Client(d.socket) as c:
            c.restart("alpha", wait=20)  # state changes published before anyone listens
        import threading
        import time

        asked = time.time()
        follower = subprocess.Popen(
            [sys.executable, "-m", "pipevisor.supervisor", "events", "--since", "1h",
             "--kind", "state", "--json", "--socket", d.socket],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = threading.Timer(30, follower.kill)  # no history: readline would wait
        deadline.start()
        try:
            assert follower.stdout is not None
            seen = [orjson.loads(follower.stdout.readline()) for _ in range(3)]
        finally:
            deadline.cancel()
            follower.terminate()
            follower.wait(10)
        assert all(e["plugin"] == "alpha" and e["kind"] == "state" for e in seen)
        times = [e["time"] for e in seen]
        assert times == sorted(times) and times[-1] < asked  # history, from before


def test_a_plugin_flooding_large_events_keeps_the_history_within_its_bytes() -> None:
    """A plugin decides how many and how large its log events are: the history the
    daemon keeps for `events --since` stays within RECENT_BYTES whatever it sends."""
    from pipevisor.supervisor.engine.events import RECENT_BYTES, event_size

    hub = EventHub()
    for i in range(200):
        hub.publish(SupervisorEvent("evil", "log", {"i": i, "message": "m" * 64_000}))
    kept = hub.recent(0)
    assert kept and kept[-1].detail["i"] == 199  # the newest stay
    assert sum(event_size(e) for e in kept) <= RECENT_BYTES
    assert len(kept) < 200
