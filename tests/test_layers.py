"""The layers hold: cli -> orchestrator -> agents | render | scoring | store -> config, types, profiles.

The contracts live in pyproject.toml ([tool.importlinter]); these tests run the real `lint-imports`
of this venv on the real package, and on a copy with forbidden imports planted, so a contract
weakened into one that cannot fail is caught too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=package_parent,
                          env=env, capture_output=True, text=True, timeout=240)


def test_lint_imports_passes():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_catch_a_forbidden_import(tmp_path):
    shutil.copytree(ROOT / "reverie", tmp_path / "reverie", ignore=shutil.ignore_patterns("__pycache__"))
    plant = {
        "agents/formula.py": "from reverie.render import resolution",  # agents -> render: not independent
        "store/lineage.py": "from reverie.orchestrator import curation",  # store -> orchestrator: upwards
        "render/resolution.py": "from reverie.render import fixed",  # with fixed -> resolution below: a circle
        "render/fixed.py": "from reverie.render import resolution",
    }
    for path, line in plant.items():
        with open(tmp_path / "reverie" / path, "a") as f:
            f.write(f"\n{line}  # planted by test_layers\n")
    result = lint_imports(tmp_path)
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "3 broken" in text, text
    assert "reverie.store.lineage -> reverie.orchestrator.curation" in text
    assert "reverie.agents.formula -> reverie.render.resolution" in text
    assert "No cycles are allowed in reverie.render" in text


def test_no_import_circle_between_any_two_modules():
    graph = grimp.build_graph("reverie", cache_dir=None)
    circles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if graph.chain_exists(importer=imported, imported=module):
                circles.append(" -> ".join(graph.find_shortest_chain(importer=imported, imported=module) or ()) + f" -> {imported}")
    assert not circles, "\n".join(circles)
