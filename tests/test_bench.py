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


def test_rounds_bench_times_the_store_in_every_round(tmp_path, capsys):
    result = load("bench_rounds").main(["--rounds", "12", "--n", "2", "--home", str(tmp_path / "h"), "--by-method"])
    assert result["rounds"] == 12 and all(s > 0 for s in result["per_round"])
    printed = capsys.readouterr().out
    assert "ratio (last / first)" in printed and "add_render" in printed


def test_gpu_bench_runs_its_code_path_at_tiny_size_on_cpu(capsys):
    result = load("bench_gpu").main(["--size", "tiny", "--images", "2", "--batches", "1,2", "--repeats", "1",
                                        "--resolution", "32", "--steps", "1"])
    assert [(r["path"], r["batch"]) for r in result["rows"]] == [
        ("plain diffusers loop", 1), ("reverie engine", 1), ("plain diffusers loop", 2), ("reverie engine", 2)]
    assert all(r["s_per_image"] > 0 for r in result["rows"])
    assert set(result["parts"]) == {"text encoder (one prompt)", "VAE decode (one image)",
                                    "PNG encode with metadata (one image)", "scoring (one image)"}
    printed = capsys.readouterr().out
    assert "| path | torch.compile | batch | s/image |" in printed and "| part | s per call |" in printed


def test_gpu_bench_at_full_size_needs_cuda_and_says_so_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full-size run is the real benchmark, not a test")
    with pytest.raises(SystemExit) as exit:
        load("bench_gpu").main(["--size", "full"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs a CUDA GPU" in err


def test_vs_diffusers_bench(tmp_path, capsys):
    result = load("bench_vs_diffusers").main(["--n", "4", "--size", "128", "--steps", "1", "--repeats", "1",
                                              "--whole-repeats", "0", "--home", str(tmp_path / "h")])
    assert result["plain"] > 0 and result["engine"] > 0 and result["make"] > 0
    assert "ratio" in capsys.readouterr().out


def test_edit_bench(tiny_models_dir, capsys):
    result = load("bench_edit").main(["--n", "1", "--size", "64", "--steps", "2", "--models-dir", str(tiny_models_dir)])
    assert set(result) == {"t2i", "edit", "edit_share"} and result["edit_share"] > 0
    assert "the edit takes" in capsys.readouterr().out


@pytest.mark.slow
def test_vs_diffusers_bench_whole_process(tmp_path, capsys):
    """Two more processes that each import torch and load the pipeline: slow on a shared CPU."""
    result = load("bench_vs_diffusers").main(["--n", "2", "--size", "128", "--steps", "1", "--repeats", "1",
                                              "--whole-repeats", "1", "--home", str(tmp_path / "h")])
    assert result["make_whole"] >= result["make_to_last_line"] > 0 and result["plain_whole"] > 0
    assert "exit lag" in capsys.readouterr().out


def test_warm_bench_runs_one_make_each_way(tmp_path, tiny_models_dir, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    result = load("bench_warm").main(["--makes", "1", "--n", "1", "--home", str(home), "--also", "expand"])
    assert result["local"] > 0 and result["warm"] > 0 and result["ratio"] > 0
    assert result["expand"]["warm"] > 0
    printed = capsys.readouterr().out
    assert "ratio in-process / warm" in printed and "× `reverie expand`" in printed
    assert not (home / "serve.json").exists()  # the bench stopped its server


def test_failfast_bench_times_every_case_against_the_interpreter(capsys):
    results = load("bench_failfast").main(["--repeats", "1"])
    assert len(results) == 7 and all(t > 0 for t in results.values())
    assert "python -c pass" in capsys.readouterr().out
