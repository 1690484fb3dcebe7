"""Parity with ComfyUI's own workflow templates (the comfyui-workflow-templates-json package).

The templates are UI-format graphs; their widget values are read in each node's widget order.
Deliberate differences, each asserted as it stands so a change on either side is seen:
- sampler and steps: reverie keeps the profile's euler / 9 steps (what the diffusers engine runs,
  so both engines make the same picture from the same spec) where the template has
  res_multistep / 8.
- the control template runs Canny (and resizes, previews) inside ComfyUI; reverie preprocesses
  the reference itself (it is stored with the run's lineage) and uploads the edge map.
"""

from __future__ import annotations

import json

import pytest

from reverie.render.comfy_workflow import build_workflow, comfy_files
from reverie.render.comfyui import profile_spec
from reverie.profiles import get_profile
from reverie.types import Control

templates = pytest.importorskip("comfyui_workflow_templates_json", reason="pip install comfyui-workflow-templates-json")

# Nodes that only draw the UI or preprocess the image inside ComfyUI (see the docstring).
UI_ONLY = {"MarkdownNote", "Note", "PreviewImage", "Canny", "ImageScaleToMaxDimension", "GetImageSize"}
DOCUMENTED = {"sampler_name": ("res_multistep", "euler"), "steps": (8, 9)}


def template_nodes(name: str) -> dict[str, list]:
    """class_type -> widget values, for every node of the template and of its subgraphs."""
    from importlib.resources import files

    t = json.loads((files(templates) / "templates" / name).read_text())
    nodes = list(t["nodes"]) + [n for sg in (t.get("definitions") or {}).get("subgraphs", []) for n in sg["nodes"]]
    subgraph_ids = {sg["id"] for sg in (t.get("definitions") or {}).get("subgraphs", [])}
    return {n["type"]: n.get("widgets_values") or [] for n in nodes if n["type"] not in subgraph_ids | UI_ONLY}


def reverie_nodes(control=None) -> dict[str, dict]:
    profile = get_profile("z-image-turbo")
    spec = profile_spec(profile, prompt="a fox")
    if control is not None:
        spec = type(spec)(**{**spec.to_dict(), "control": control})
    workflow = build_workflow(spec, profile, comfy_files(profile), "edges.png" if control else None)
    return {n["class_type"]: n["inputs"] for n in workflow.values()}


@pytest.mark.parametrize("template, control", [
    ("image_z_image_turbo.json", None),
    ("image_z_image_turbo_fun_union_controlnet.json", Control("canny", "ab" * 32, "edges.png", 1.0)),
])
def test_zimage_workflows_match_comfyuis_templates(template, control):
    theirs, ours = template_nodes(template), reverie_nodes(control)
    assert set(ours) == set(theirs)  # node classes, latent node included
    assert theirs["EmptySD3LatentImage"][2] == ours["EmptySD3LatentImage"]["batch_size"] == 1
    # Loaders: the same files, the same loader types.
    assert theirs["UNETLoader"] == [ours["UNETLoader"]["unet_name"], ours["UNETLoader"]["weight_dtype"]]
    assert theirs["CLIPLoader"][:2] == [ours["CLIPLoader"]["clip_name"], ours["CLIPLoader"]["type"]]
    assert theirs["VAELoader"] == [ours["VAELoader"]["vae_name"]]
    if control is not None:
        assert theirs["ModelPatchLoader"] == [ours["ModelPatchLoader"]["name"]]
        assert theirs["QwenImageDiffsynthControlnet"] == [ours["QwenImageDiffsynthControlnet"]["strength"]]
    assert theirs["ModelSamplingAuraFlow"] == [ours["ModelSamplingAuraFlow"]["shift"]]
    seed, _, steps, cfg, sampler, scheduler, denoise = theirs["KSampler"]
    k = ours["KSampler"]
    assert (cfg, scheduler, denoise) == (k["cfg"], k["scheduler"], k["denoise"])
    assert (sampler, k["sampler_name"]) == DOCUMENTED["sampler_name"]
    assert (steps, k["steps"]) == DOCUMENTED["steps"]
