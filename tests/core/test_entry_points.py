"""The entry points outsiders load: ``graphs/lead_bot.py`` for ``langgraph dev`` and ``langgraph.json``."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_langgraph_json_points_at_the_compiled_graph_without_a_checkpointer() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["graphs"] == {"lead_bot": "./graphs/lead_bot.py:graph"}
    module = runpy.run_path(str(ROOT / "graphs" / "lead_bot.py"))
    graph = module["graph"]
    assert graph.checkpointer is None
    assert "determine_path" in graph.get_graph().nodes
