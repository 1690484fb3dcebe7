"""A model family installed with pip (the example in examples/family_plugin) is found through the
`reverie.families` entry points by the real console script: listed by `reverie models` with the
package that added it, rendered by `reverie make --profile`, reproduced by `reverie reproduce`.
A plugin that is broken or takes a built-in name is one line and costs only itself.

The fast tests put a real distribution on the path without pip: a `*.dist-info` folder with an
entry_points.txt is what importlib.metadata reads for an installed package."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reverie.profiles import BUILT_IN_FAMILIES, FAMILIES, Family, get_profile, register_family, register_profile
from reverie.types import ReverieError
from tests.conftest import REPO, run_cli


def on_path(*folders: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([*map(str, folders), os.environ.get("PYTHONPATH", "")])}


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: family plugin")]


@pytest.fixture(scope="module")
def lumen_path(tmp_path_factory) -> Path:
    # Installed into a folder of its own (put on PYTHONPATH), from a copy of the source (setuptools
    # writes build/ beside it): the shared venv and the checkout are as they were afterwards.
    source = tmp_path_factory.mktemp("src") / "family_plugin"
    shutil.copytree(REPO / "examples" / "family_plugin", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    assert (target / "reverie_lumen.py").is_file()
    return target


@pytest.mark.slow
def test_an_installed_family_is_listed_rendered_and_reproduced_by_the_console_script(home, lumen_path):
    env = on_path(lumen_path)
    listed = run_cli("models", "--json", home=home, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    lumen = rows["lumen-turbo"]
    assert (lumen["kind"], lumen["family"], lumen["pipeline"]) == ("profile", "lumen", "ZImagePipeline")
    assert lumen["plugin"] == "reverie-lumen (reverie_lumen:register)"
    assert rows["z-image-turbo"]["plugin"] is None and not warnings_in(listed.stderr)
    table = run_cli("models", home=home, env=env)
    assert "family plugins: lumen-turbo (from reverie-lumen (reverie_lumen:register))" in table.stdout

    made = run_cli("make", "a lighthouse at dusk", "--profile", "lumen-turbo", "--engine", "tiny", "--n", "2",
                   "--rounds", "1", "--json", home=home, env=env)
    assert made.returncode == 0, made.stderr
    best = json.loads(made.stdout)["best"]
    assert len(best) == 2
    png = best[0]["path"]
    from reverie.store.pngmeta import read_metadata

    chunks = read_metadata(Path(png))
    assert json.loads(chunks["reverie"])["spec"]["profile"] == "lumen-turbo"
    assert re.search(r"Model: ([^,]+)", chunks["parameters"]).group(1) == "tiny-lumen-v1 (random weights)"

    again = run_cli("reproduce", png, home=home, env=env)
    assert again.returncode == 0, again.stderr
    assert "match: pixels identical" in again.stdout
    # Without the plugin the profile is unknown and the default tiny model renders other pixels:
    # the match above is the plugin's own tiny model.
    alone = run_cli("reproduce", png, home=home)
    assert alone.returncode == 1 and "mismatch" in alone.stdout


@pytest.mark.slow
def test_a_plugin_profile_without_weights_is_one_line_before_torch(home, lumen_path):
    res = run_cli("make", "a fox", "--profile", "lumen-turbo", "--engine", "diffusers", "--n", "1", "--rounds", "1",
                  home=home, env={**on_path(lumen_path), "PYTHONPROFILEIMPORTTIME": "1"})
    said = [line for line in res.stderr.splitlines() if not line.startswith("import time:")]
    errors = [line for line in said if line.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(errors) == 1 and "reverie models pull lumen-turbo" in errors[0], said
    imported = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "diffusers", "transformers"}  # the plugin's register() imports none of them


FAKE_MODULE = '''
from reverie.profiles import FAMILIES, Family, Profile, register_family, register_profile

NOT_CALLABLE = 42


def take_sdxl():
    register_family(Family(name="sdxl", label="not SDXL", pipeline="FluxPipeline", flow=True))


def halfway():
    register_family(Family(name="halfway", label="Halfway", pipeline="ZImagePipeline", flow=True))
    register_profile(Profile(name="halfway-1", family="halfway", pipeline="ZImagePipeline", repo_id="x/halfway",
                             steps=4, guidance=0.0, sampler="euler", shift=3.0, multiple=16, max_side=1024,
                             prompt_style="natural", negative=False))
    from reverie.render.families import ZImageAdapter, register_adapter
    from reverie.render.tiny import build_tiny_pipeline, register_tiny

    register_adapter(type("HalfwayAdapter", (ZImageAdapter,), {"family": "halfway"})())
    register_tiny("halfway", "tiny-halfway-v1", build_tiny_pipeline)
    raise RuntimeError("the weights moved\\nsee the changelog")


def fine():
    register_family(Family(name="fine", label="Fine", pipeline="ZImagePipeline", flow=True, cfg_offset=1.0))
    register_profile(Profile(name="fine-1", family="fine", pipeline="ZImagePipeline", repo_id="x/fine",
                             steps=4, guidance=0.0, sampler="euler", shift=3.0, multiple=16, max_side=1024,
                             prompt_style="natural", negative=False))


def fine_again():
    register_profile(Profile(name="fine-1", family="fine", pipeline="ZImagePipeline", repo_id="x/other",
                             steps=4, guidance=0.0, sampler="euler", shift=3.0, multiple=16, max_side=1024,
                             prompt_style="natural", negative=False))
'''


@pytest.fixture
def fake_site(tmp_path) -> Path:
    """A folder holding one real (unpacked) distribution with five family entry points."""
    site = tmp_path / "site"
    dist = site / "fake_families-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-families\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [reverie.families]
        a_broken = no_such_module_for_reverie:register
        b_clash = fake_families:take_sdxl
        c_halfway = fake_families:halfway
        d_fine = fake_families:fine
        e_fine_again = fake_families:fine_again
        f_not_callable = fake_families:NOT_CALLABLE
        """))
    (site / "fake_families.py").write_text(FAKE_MODULE)
    return site


def test_broken_and_clashing_plugins_are_one_line_each_and_cost_only_themselves(tmp_path, fake_site):
    listed = run_cli("models", "--json", home=tmp_path / "home", env=on_path(fake_site))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    warned = warnings_in(listed.stderr)
    assert len(warned) == 5, listed.stderr
    assert "family plugin a_broken (from fake-families) was not loaded: No module named 'no_such_module_for_reverie'" in warned[0]
    assert "family sdxl reuses the name of a built-in family: rename it" in warned[1]
    assert "the weights moved see the changelog" in warned[2]  # an exception's lines joined: one line
    assert "profile fine-1 is already registered by fake-families (fake_families:fine)" in warned[3]
    assert "must name a function" in warned[4]
    assert all(w.endswith("fix it or `pip uninstall fake-families`") for w in warned)

    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    problems = [r for r in rows.values() if r["kind"] == "family plugin"]
    assert sorted(r["name"] for r in problems) == ["a_broken", "b_clash", "c_halfway", "e_fine_again", "f_not_callable"]
    assert "halfway-1" not in rows  # what a failing plugin registered before it failed is taken back
    assert (rows["fine-1"]["repo"], rows["fine-1"]["plugin"]) == ("x/fine", "fake-families (fake_families:fine)")
    assert (rows["sdxl"]["family"], rows["sdxl"]["pipeline"]) == ("sdxl", "StableDiffusionXLPipeline")

    unknown = run_cli("make", "a fox", "--profile", "halfway-1", "--n", "1", "--rounds", "1",
                      home=tmp_path / "home", env=on_path(fake_site))
    errors = [line for line in unknown.stderr.splitlines() if line.startswith("error:")]
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert len(errors) == 1 and "unknown profile 'halfway-1'" in errors[0] and "5 family plugin(s) failed to load" in errors[0]


def test_the_plugins_load_when_a_profile_is_looked_up_not_when_reverie_is_imported(fake_site):
    probe = ("import sys, reverie.cli, reverie.serve, reverie.profiles as p\n"
             "print('imported', 'fake_families' in sys.modules, flush=True)\n"
             "p.get_profile('fine-1')\n"
             "print('looked up', 'fake_families' in sys.modules, flush=True)\n"
             "from reverie.render.families import ADAPTERS\n"
             "from reverie.render.tiny import TINY_FAMILIES\n"
             "print('left behind', sorted({'halfway', 'fine'} & (set(ADAPTERS) | set(TINY_FAMILIES) | set(p.FAMILIES))))\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **on_path(fake_site, REPO)})
    assert res.returncode == 0, res.stderr
    # The failing plugin's family, adapter and tiny builder are all taken back; the good one's family stays.
    assert res.stdout.split("\n")[:3] == ["imported False", "looked up True", "left behind ['fine']"]
    assert len(warnings_in(res.stderr)) == 5  # once per process, however often the tables are read


def test_a_family_may_not_take_a_built_in_name():
    from reverie.render.families import ZImageAdapter, register_adapter
    from reverie.render.tiny import build_tiny_pipeline, register_tiny

    with pytest.raises(ReverieError, match="built-in family"):
        register_family(Family(name="sdxl", label="not SDXL", pipeline="FluxPipeline", flow=True))
    with pytest.raises(ReverieError, match="built-in profile"):
        register_profile(get_profile("sd15"))
    with pytest.raises(ReverieError, match="built-in family"):
        register_adapter(ZImageAdapter())
    with pytest.raises(ReverieError, match="built-in family"):
        register_tiny("z-image", "tiny-elsewhere", build_tiny_pipeline)
    assert FAMILIES["sdxl"].pipeline == "StableDiffusionXLPipeline" and "sdxl" in BUILT_IN_FAMILIES
