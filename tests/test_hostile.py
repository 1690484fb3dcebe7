"""Hostile input through the real CLI: each answered with one clear `error:` line, no traceback,
a non-zero exit, and nothing already in the home lost."""

from __future__ import annotations

import io
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.openai_server import Reply, ScriptedLLM


@pytest.fixture(scope="module")
def filled_home(tmp_path_factory, tiny_models_dir) -> Path:
    """A home that already holds one finished run, which no bad input may damage."""
    from reverie.orchestrator.studio import Studio

    h = tmp_path_factory.mktemp("hostile") / "home"
    h.mkdir()
    (h / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    with Studio(home=h, engine="tiny") as studio:
        studio.make("a lighthouse at dusk", n=1, rounds=1, seed=3, megapixels=0.05)
    return h


def _snapshot(home: Path) -> tuple:
    conn = sqlite3.connect(home / "reverie.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return (conn.execute("select count(*) from runs where status = 'done'").fetchone()[0],
                conn.execute("select group_concat(sha256) from renders where status = 'ok'").fetchone()[0])
    finally:
        conn.close()


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG file that claims to be width x height (a decompression bomb, cheaply)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _files(tmp: Path) -> dict[str, Path]:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buf, format="PNG")
    files = {"text": tmp / "notes.png", "truncated": tmp / "cut.png", "bomb": tmp / "bomb.png", "good": tmp / "good.png"}
    files["text"].write_text("this is not an image")
    files["truncated"].write_bytes(buf.getvalue()[:80])
    files["bomb"].write_bytes(_png_header(20000, 20000))
    files["good"].write_bytes(buf.getvalue())
    (tmp / "a-file").write_text("a file, not a folder")
    return files


MAKE = ["make", "--engine", "tiny", "--n", "1", "--rounds", "1"]

# (name, args with {text}/{truncated}/{bomb}/{good}/{tmp} placeholders, home: "filled" | "other", words in the error)
CASES = [
    ("empty idea", ["make", ""], "filled", "empty"),
    ("whitespace idea", ["make", "  \t \n "], "filled", "empty"),
    ("huge idea", ["make", "fox " * 30000], "filled", "characters"),
    ("reference not an image", [*MAKE, "a fox", "--ref", "{text}"], "filled", "not an image"),
    ("truncated reference", [*MAKE, "a fox", "--ref", "{truncated}"], "filled", "truncated"),
    ("decompression bomb", [*MAKE, "a fox", "--ref", "{bomb}"], "filled", "too large"),
    ("unknown profile", [*MAKE, "a fox", "--profile", "sd99"], "filled", "profile"),
    ("unknown engine", ["make", "a fox", "--engine", "warp"], "filled", "engine"),
    ("model path missing", ["make", "a fox", "--n", "1", "--rounds", "1", "--model-path", "{tmp}/no-such-model"], "filled",
     "does not exist"),
    ("profile without weights", ["make", "a fox", "--n", "1", "--rounds", "1", "--profile", "sdxl"], "filled",
     "reverie models pull sdxl"),
    ("unknown control kind", [*MAKE, "a fox", "--ref", "{good}", "--control", "x-ray"], "filled", "control"),
    ("aspect 0:1", [*MAKE, "a fox", "--aspect", "0:1"], "filled", "aspect"),
    ("aspect abc", [*MAKE, "a fox", "--aspect", "abc"], "filled", "aspect"),
    ("megapixels 0", [*MAKE, "a fox", "--megapixels", "0"], "filled", "megapixels"),
    ("megapixels 100", [*MAKE, "a fox", "--megapixels", "100"], "filled", "megapixels"),
    ("n 0", ["make", "a fox", "--engine", "tiny", "--n", "0"], "filled", "n must be"),
    ("n 100000", ["make", "a fox", "--engine", "tiny", "--n", "100000"], "filled", "n must be"),
    ("home under a file", [*MAKE, "a fox"], "{tmp}/a-file/sub", "cannot write"),
    ("home in /proc", [*MAKE, "a fox"], "/proc/reverie-home", "cannot write"),
    ("lineage of a text file", ["lineage", "{text}"], "filled", "not an image"),
    ("lineage of a bomb", ["lineage", "{bomb}"], "filled", "gigantic"),
    ("reproduce a truncated png", ["reproduce", "{truncated}"], "filled", "damaged"),
    ("reproduce a plain png", ["reproduce", "{good}"], "filled", "no reverie"),
    ("lineage of nothing", ["lineage", "zzz"], "filled", "not a render id"),
    ("export unknown run", ["export", "nope", "{tmp}/out"], "filled", "no run"),
]


def _check_one_line(done, words: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert words.lower() in errors[0].lower(), errors[0]


# Each row starts a real CLI process; the default run takes one row of each kind, `-m slow` all.
FAST = {"empty idea", "decompression bomb", "unknown engine", "aspect 0:1", "megapixels 100", "n 100000",
        "home under a file", "lineage of a text file", "model path missing",
        "profile without weights"}
ROWS = [pytest.param(*c, id=c[0], marks=() if c[0] in FAST else pytest.mark.slow) for c in CASES]


@pytest.mark.parametrize("name,args,where,words", ROWS)
def test_bad_input_gets_one_clear_line(filled_home, tmp_path, name, args, where, words):
    files = _files(tmp_path)
    fill = {**{k: str(v) for k, v in files.items()}, "tmp": str(tmp_path)}
    argv = [a.format(**fill) if "{" in a else a for a in args]
    home = filled_home if where == "filled" else Path(where.format(**fill))
    before = _snapshot(filled_home)
    done = run_cli(*argv, home=home, timeout=120)
    _check_one_line(done, words)
    assert _snapshot(filled_home) == before


def test_corrupted_database_is_one_line_and_left_alone(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    junk = b"SQLite format 3\x00" + bytes(range(256)) * 16
    (home / "reverie.db").write_bytes(junk)
    done = run_cli("runs", home=home)
    _check_one_line(done, "unusable")
    assert (home / "reverie.db").read_bytes() == junk  # the user's file is theirs to rescue


def test_locked_database_is_one_line_after_a_short_wait(filled_home):
    before = _snapshot(filled_home)
    holder = sqlite3.connect(filled_home / "reverie.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("update runs set stop_reason = stop_reason")
        done = run_cli(*MAKE, "a fox", home=filled_home, env={"REVERIE_BUSY_TIMEOUT": "0.5"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _check_one_line(done, "locked")
    assert _snapshot(filled_home) == before


def test_megabyte_idea_and_control_characters(filled_home):
    """A 1 MB idea is refused (argv cannot carry it, so through the API); control characters are
    cleaned and the idea accepted."""
    from reverie.orchestrator.requests import clean_idea
    from reverie.orchestrator.studio import Studio
    from reverie.types import ReverieError

    with pytest.raises(ReverieError, match="characters long"):
        Studio(home=filled_home, engine="tiny").request("x" * 1_000_000)
    assert clean_idea("a fox\x07 in\x1b the\x00 rain\u200b") == "a fox in the rain"
    done = run_cli(*MAKE, "a fox\x07 in\x1b the rain", "--megapixels", "0.05", "--seed", "5", "--json", home=filled_home)
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout)
    best = result["best"][0]
    # File names come from content hashes, never from prompt text.
    assert Path(best["path"]).name == f"{best['sha256']}.png"


# An LLM that answers garbage, 500s, nothing in time, or is not there at all: the run still ends
# with every render stored, and the fall back to the formula expander is said once.
LLM_CASES = {
    "garbage": lambda body: Reply("I'd love to help! {not json"),
    "500": lambda body: Reply(status=500),
    "timeout": lambda body: Reply(delay=30),
    "connection refused": None,
}


# Each row is a real CLI process (~10 s here): the default run takes garbage and a dead server, `-m slow` all.
LLM_ROWS = [pytest.param(b, marks=() if b in ("garbage", "connection refused") else pytest.mark.slow) for b in LLM_CASES]


@pytest.mark.parametrize("behaviour", LLM_ROWS)
def test_a_failing_llm_falls_back_to_the_formula_in_one_notice(filled_home, tmp_path, behaviour):
    import json

    config = tmp_path / "reverie.toml"
    config.write_text("[llm]\ntimeout = 1\nretries = 1\n")  # a dead LLM costs one short timeout
    with ScriptedLLM(responder=LLM_CASES[behaviour] or (lambda body: Reply(status=500))) as llm:
        url = llm.url
        if LLM_CASES[behaviour] is None:
            llm.stop()  # nothing listens on the port any more
        done = run_cli(*MAKE, "a fox", "--n", "2", "--megapixels", "0.02", "--seed", "9", "--llm-url", url,
                       "--llm-model", "m", "--config", str(config), "--json", home=filled_home, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    fallbacks = [line for line in done.stderr.splitlines() if "LLM unusable" in line]
    assert len(fallbacks) == 1, done.stderr
    assert fallbacks[0].startswith("reverie:") and "formula expander" in fallbacks[0]
    result = json.loads(done.stdout)
    assert result["renders"] == 2 and all(Path(b["path"]).is_file() for b in result["best"])
