"""The README's profile table and docs/models.md's are the ones reverie.render.profile_table writes
from reverie.profiles: a profile added or a setting changed without pasting the tables fails here."""

from __future__ import annotations

from pathlib import Path

from reverie.profiles import PROFILES
from reverie.render.profile_table import markdown_table

ROOT = Path(__file__).resolve().parent.parent
HOW = "paste the output of `python -m reverie.render.profile_table{}` over the table in {}"


def table_in(page: str, header: str) -> str:
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_the_readme_table_lists_every_profile_as_profiles_py_has_it():
    expected = markdown_table()
    assert table_in("README.md", expected.splitlines()[0]) == expected, HOW.format("", "README.md")
    assert len(expected.splitlines()) == len(PROFILES) + 2  # one line per profile


def test_the_models_page_table_is_the_full_one():
    expected = markdown_table(full=True)
    assert table_in("docs/models.md", expected.splitlines()[0]) == expected, HOW.format(" --full", "docs/models.md")
