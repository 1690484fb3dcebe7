"""reverie.toml mistakes: one line naming the file, the key and what to write, through the real CLI."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("text, needles", [
    ('[llm]\ntimeout = "soon"\n', ['[llm] timeout = "soon"', "a number of seconds"]),
    ("[llm]\nretries = 1.5\n", ["[llm] retries = 1.5", "whole number"]),
    ("[llm]\nmax_tokens = \"lots\"\n", ["[llm] max_tokens", "whole number of tokens"]),
    ("[llm]\nbase_url = 11434\n", ["[llm] base_url = 11434", "a URL in quotes"]),
    ("[llm]\ntime_out = 5\n", ["unknown setting 'time_out' in [llm]", "timeout"]),
    ("[scoring]\nweights = 7\n", ["[scoring] weights = 7", "a table of numbers"]),
    ('[scoring]\nweights = { aesthetic = "lots" }\n', ['weights = { aesthetic = "lots" }', "a table of numbers"]),
    ('[scoring]\nbatch_size = "8"\n', ['[scoring] batch_size = "8"', "whole number"]),
    ("[scoring]\npickscore = 3\n", ["[scoring] pickscore = 3", '"off"']),
    ("llm = 5\n", ["[llm] must be a section"]),
    ("timeout = 60\n", ["timeout = 60 is outside any section", "[llm]"]),
])
def test_setting_of_the_wrong_type_is_one_line(tmp_path, text, needles):
    (tmp_path / "reverie.toml").write_text(text)
    for args in (["expand", "a fox"], ["models"]):
        proc = run_cli(*args, home=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: config file " + str(tmp_path / "reverie.toml"))
        for needle in needles:
            assert needle in lines[0]
        assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr


def test_syntax_error_names_the_file_and_line(tmp_path):
    (tmp_path / "reverie.toml").write_text('[llm]\nmodel = "qwen3:8b"\nbase_url = \n')
    proc = run_cli("expand", "a fox", home=tmp_path)
    [line] = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and str(tmp_path / "reverie.toml") in line and "line 3" in line


def test_sections_reverie_does_not_read_are_left_alone(tmp_path):
    (tmp_path / "reverie.toml").write_text('[llm]\ntimeout = 5\nmax_tokens = 900\n\n[something_else]\nanything = [1, "x"]\n')
    proc = run_cli("expand", "a fox", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
