"""When liveness pings go out.

Plugins started together (a daemon start, a reload, a host loading hundreds at once)
become ready within a few seconds of each other; pinging each one exactly
``ping_interval`` after it became ready would send all their pings in the same few
seconds, every interval: a burst of thousands of requests and answers that shows up
as a latency spike for real calls (issue #20 measured 50-90 ms at 1,000 plugins).
Drawing each instance's first ping uniformly from the second half of the interval
spreads the pings over half of it for good, since every later ping keeps the phase;
no plugin is pinged later than before, so a hang is still noticed within
``ping_interval + ping_timeout``.
"""

from __future__ import annotations

__all__ = ["first_ping_delay"]


def first_ping_delay(interval: float, draw: float) -> float:
    """The wait before an instance's first ping: ``draw`` (uniform in [0, 1)) placed in
    the second half of ``interval``."""
    return interval * (0.5 + 0.5 * draw)
