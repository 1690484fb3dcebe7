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


# -- the control workflow's three differences (issue 27), each tested as it stands -------------
def template_graph(name: str, subgraph: bool = True) -> tuple[dict, list]:
    """(node id -> node, links as (origin, target, target input name)) of the template's subgraph."""
    from importlib.resources import files

    t = json.loads((files(templates) / "templates" / name).read_text())
    graph = (t.get("definitions") or {}).get("subgraphs", [])[0] if subgraph else t
    nodes = {n["id"]: n for n in graph["nodes"]}
    links = []
    for link in graph["links"]:
        origin, target, slot = (link["origin_id"], link["target_id"], link["target_slot"]) if isinstance(link, dict) \
            else (link[1], link[3], link[4])
        if target in nodes:
            links.append((nodes[origin]["type"] if origin in nodes else "input", nodes[target]["type"],
                          nodes[target]["inputs"][slot]["name"]))
    return nodes, links


CONTROL_TEMPLATE = "image_z_image_turbo_fun_union_controlnet.json"


def model_chain(links_to) -> list[str]:
    """The MODEL path from the loader to the sampler: [UNETLoader, ..., KSampler]."""
    chain = ["KSampler"]
    while chain[-1] != "UNETLoader":
        chain.append(links_to(chain[-1]))
    return chain[::-1]


def test_control_model_patch_comes_before_auraflow_as_in_the_template():
    _, links = template_graph(CONTROL_TEMPLATE)
    theirs = model_chain(lambda cls: next(o for o, t, name in links if t == cls and name == "model"))
    profile = get_profile("z-image-turbo")
    spec = type(profile_spec(profile))(**{**profile_spec(profile, prompt="a fox").to_dict(),
                                           "control": Control("canny", "ab" * 32, "edges.png", 1.0)})
    workflow = build_workflow(spec, profile, comfy_files(profile), "edges.png")
    by_class = {n["class_type"]: n for n in workflow.values()}
    ours = model_chain(lambda cls: workflow[by_class[cls]["inputs"]["model"][0]]["class_type"])
    assert theirs == ours == ["UNETLoader", "QwenImageDiffsynthControlnet", "ModelSamplingAuraFlow", "KSampler"]


def test_control_strength_default_differs_from_the_template_as_documented():
    """The template runs the union ControlNet at 1.0; reverie's default --strength is 0.8 (the
    prompt keeps some say), the same on both engines. --strength 1.0 is the template's."""
    from pathlib import Path

    from reverie.types import Reference

    nodes, _ = template_graph(CONTROL_TEMPLATE)
    [theirs] = [n["widgets_values"][0] for n in nodes.values() if n["type"] == "QwenImageDiffsynthControlnet"]
    ours = Reference("x.png").strength
    assert (theirs, ours) == (1, 0.8)
    doc = (Path(__file__).parent.parent / "docs" / "comfyui-control.md").read_text()
    assert "0.8" in doc and "1.0" in doc and "--strength 1.0" in doc


def test_control_latent_size_comes_from_the_request_not_the_control_image_as_documented():
    """The template sizes the latent from the control image (GetImageSize, after scaling it to at
    most 1024 px); reverie sizes it from the request (--aspect, --megapixels) and uploads the control
    image resized to that size, so both engines render the same spec the same way."""
    from pathlib import Path

    _, links = template_graph(CONTROL_TEMPLATE)
    assert ("GetImageSize", "EmptySD3LatentImage", "width") in links
    assert ("GetImageSize", "EmptySD3LatentImage", "height") in links
    profile = get_profile("z-image-turbo")
    spec = type(profile_spec(profile))(**{**profile_spec(profile, prompt="a fox").to_dict(), "width": 832,
                                           "height": 1216, "control": Control("canny", "ab" * 32, "edges.png", 0.8)})
    workflow = build_workflow(spec, profile, comfy_files(profile), "edges.png")
    [latent] = [n["inputs"] for n in workflow.values() if n["class_type"] == "EmptySD3LatentImage"]
    assert (latent["width"], latent["height"]) == (832, 1216)
    assert "GetImageSize" not in {n["class_type"] for n in workflow.values()}
    doc = (Path(__file__).parent.parent / "docs" / "comfyui-control.md").read_text()
    assert "GetImageSize" in doc and "--aspect" in doc
