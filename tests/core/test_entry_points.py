"""The entry points outsiders load: ``graphs/lead_bot.py`` for ``langgraph dev`` and ``langgraph.json``."""

from __future__ import annotations

import ast
import json
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_langgraph_json_points_at_the_compiled_graph_without_a_checkpointer() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["graphs"] == {"lead_bot": "./graphs/lead_bot.py:graph"}
    module = runpy.run_path(str(ROOT / "graphs" / "lead_bot.py"))
    graph = module["graph"]
    assert graph.checkpointer is None
    assert "determine_path" in graph.get_graph().nodes


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_production_module_imports_testing() -> None:
    package = ROOT / "ghl_real_estate_ai"
    production = [p for p in package.rglob("*.py") if "testing" not in p.relative_to(package).parts]
    production += list((ROOT / "graphs").glob("*.py"))
    assert len(production) > 50
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in _imports(path) if name.startswith("ghl_real_estate_ai.testing")
        )
        for path in production
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_entry_points_load_without_the_test_helpers() -> None:
    code = (
        "import runpy, sys\n"
        f"runpy.run_path({str(ROOT / 'graphs' / 'lead_bot.py')!r})\n"
        "import ghl_real_estate_ai.cli, ghl_real_estate_ai.demo, ghl_real_estate_ai.service\n"
        "import ghl_real_estate_ai.sandbox.simulation, ghl_real_estate_ai.sandbox.world\n"
        "print(sorted(m for m in sys.modules if m.startswith('ghl_real_estate_ai.testing')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
