"""The README stays short and points at docs/ pages that exist; CI runs what the README says.

`mkdocs build --strict` (in .ci/run) checks links and anchors inside docs/; this checks what it
cannot see: the README itself, which lives outside docs/.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_short():
    # 10000, not 8000: issue 23 wants every profile in the README's own table (one line each).
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) < 10000


def test_readme_links_point_at_pages_in_the_docs_nav():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 5
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
        assert Path(link).name in nav, f"{link} is not in mkdocs.yml's nav"


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"docs/{page.name} is in no nav entry of mkdocs.yml"


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(\.venv/bin/[^\n]+|python3 -m venv[^\n]+)\n```", readme)
    assert len(commands) == 2, commands
    for command in commands:
        assert command in ci, command
    assert "mkdocs build --strict" in ci
