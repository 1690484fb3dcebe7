"""Each benchmark runs end to end at tiny sizes (no timed assertions: the numbers are for people)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_encoder_calls_bench(tiny_models_dir, capsys):
    result = load("bench_encoder_calls").main(["--n", "4", "--batch-size", "2", "--size", "32", "--steps", "1",
                                               "--models-dir", str(tiny_models_dir)])
    assert result["cached"] == pytest.approx(1 / 4)  # one encoder call for four seeds
    assert result["uncached"] == pytest.approx(1 / 2)  # one per batch of two without the cache
    assert "calls per render" in capsys.readouterr().out


def test_overhead_bench(home, capsys):
    results = load("bench_overhead").main(["--n", "2", "--latencies", "0.01,0.02", "--megapixels", "0.01",
                                           "--fixed-megapixels", "0.01", "--steps", "1", "--home", str(home)])
    assert list(results) == ["tiny", "fixed 0.01s", "fixed 0.02s"]
    for name in results:
        assert results[name]["renders"] == 2
        assert 0 < results[name]["inside_engine"] <= results[name]["wall"]
    assert "overhead" in capsys.readouterr().out


def test_throughput_bench(tiny_models_dir, capsys):
    result = load("bench_throughput").main(["--n", "2", "--batch-size", "2", "--size", "32", "--steps", "1",
                                            "--models-dir", str(tiny_models_dir)])
    assert result["one_by_one"] > 0 and result["batched"] > 0
    assert "images/s" in capsys.readouterr().out


def test_store_bench(tmp_path, capsys):
    results = load("bench_store").main(["--renders", "2000", "--repeats", "2", "--home", str(tmp_path / "h"), "--explain"])
    assert set(results) == {"lineage IMAGE.png", "lineage SHA-PREFIX", "best-of (top 4 of a run)", "runs (list 30)",
                            "show RUN (tree)"}
    assert all(ms > 0 for ms in results.values())
    printed = capsys.readouterr().out
    assert "ms goal" in printed
    # The lookups walk indexes, never a whole table of renders.
    plans = printed.split("query plans:")[1]
    assert "SCAN renders" not in plans and "TEMP B-TREE" not in plans
