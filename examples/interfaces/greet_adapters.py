"""The adapter between greet 2.x (what the host's code speaks) and greet 1.x plugins.

Named in the supervisor's config as ``greet_adapters:v2_to_v1``.
"""

from __future__ import annotations

from typing import Any

from pipevisor.supervisor.engine.interfaces import Adapter


def _params_2_to_1(params: Any) -> Any:
    who = params["who"]
    name = f"{who['title']} {who['name']}" if who.get("title") else who["name"]
    return {"name": name}


def _result_1_to_2(result: Any) -> Any:
    return {"greeting": result["text"], "language": result.get("language", "en")}


v2_to_v1 = Adapter(to_plugin=_params_2_to_1, from_plugin=_result_1_to_2)
