"""The editing workflows against ComfyUI's own templates (comfyui-workflow-templates-json), node for
node and link for link, with each difference named in comfy_workflow.EDIT_DIFFERENCES asserted as
it stands; and the preflight of an editor naming its nodes and files."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from reverie.profiles import get_profile
from reverie.render.comfy_workflow import EDIT_DIFFERENCES, EDIT_TEMPLATES, build_edit_workflow, build_workflow, comfy_files
from reverie.render.comfyui import profile_spec
from reverie.render.editors import comfy_spec
from reverie.types import Source

templates = pytest.importorskip("comfyui_workflow_templates_json", reason="pip install comfyui-workflow-templates-json")

# Left out on purpose (EDIT_DIFFERENCES): the templates' scaling, their LoRA switch and its knobs,
# Kontext's stitch of a second image, and UI-only nodes. LoadImage/SaveImage sit outside the
# templates' subgraphs, so their links are compared by what the source feeds, not by the image node.
LEFT_OUT = {"FluxKontextImageScale", "ImageScaleToTotalPixels", "GetImageSize", "ImageStitch", "LoraLoaderModelOnly",
            "PrimitiveFloat", "PrimitiveInt", "PrimitiveBoolean", "KSamplerSelect", "RandomNoise", "Flux2Scheduler",
            "MarkdownNote", "Note", "PreviewImage", "MaskPreview", "LoadImage", "SaveImage"}
# FLUX.2 [klein]'s custom sampler is one KSampler in reverie's graph (EDIT_DIFFERENCES).
AS_KSAMPLER = {"CFGGuider": "KSampler", "SamplerCustomAdvanced": "KSampler"}


def edit_subgraph(name: str) -> dict:
    t = json.loads((files(templates) / "templates" / name).read_text())
    return t["definitions"]["subgraphs"][0]


def template_links(graph: dict) -> tuple[dict[str, list], set[tuple[str, str, str]]]:
    """(class -> widget values of each node, {(origin class, target class, input)}), with a
    ComfySwitchNode resolved to the branch its switch picks (off: on_false) and KSampler renames."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    raw = []
    for link in graph["links"]:
        o, t, slot = (link["origin_id"], link["target_id"], link["target_slot"]) if isinstance(link, dict) \
            else (link[1], link[3], link[4])
        if o in nodes and t in nodes:
            raw.append((o, t, nodes[t]["inputs"][slot]["name"]))
    switches = {i for i, n in nodes.items() if n["type"] == "ComfySwitchNode"}
    picked = {t: o for o, t, name in raw if t in switches and name == ("on_true" if nodes[t]["widgets_values"][0] else "on_false")}
    links = set()
    for o, t, name in raw:
        if t in switches:
            continue
        o = picked.get(o, o)
        oc, tc = (AS_KSAMPLER.get(nodes[x]["type"], nodes[x]["type"]) for x in (o, t))
        if oc in LEFT_OUT or tc in LEFT_OUT or oc == tc:
            continue
        links.add((oc, tc, name))
    widgets: dict[str, list] = {}
    for n in graph["nodes"]:
        if n["type"] not in LEFT_OUT and n["id"] not in switches:
            widgets.setdefault(AS_KSAMPLER.get(n["type"], n["type"]), []).append(n.get("widgets_values") or [])
    return widgets, links


def our_links(workflow: dict) -> tuple[dict[str, list], set[tuple[str, str, str]]]:
    nodes: dict[str, list] = {}
    links = set()
    for node in workflow.values():
        if node["class_type"] in LEFT_OUT:
            continue
        nodes.setdefault(node["class_type"], []).append(node["inputs"])
        for name, value in node["inputs"].items():
            if isinstance(value, list) and workflow[value[0]]["class_type"] not in LEFT_OUT:
                links.add((workflow[value[0]]["class_type"], node["class_type"], name))
    return nodes, links


def edit_workflow(name: str, mask: bool = False) -> dict:
    profile = get_profile(name)
    spec = profile_spec(profile, prompt="make it night")
    spec = spec.with_(source=Source(image_sha="ab" * 32, image_path="s.png", width=spec.width, height=spec.height,
                                    instruction="make it night", mask_sha="cd" * 32 if mask else "",
                                    mask_path="m.png" if mask else ""))
    spec = comfy_spec(spec)
    if spec.source is None or (spec.control is not None):  # Z-Image img2img: the img2img reference workflow
        return build_workflow(spec, profile, comfy_files(profile), "s.png")
    return build_edit_workflow(spec, profile, comfy_files(profile), "s.png", "m.png" if mask else None)


@pytest.mark.parametrize("name", ["flux1-kontext-dev", "qwen-image-edit-2511", "flux2-klein-4b"])
def test_each_instruction_editor_matches_its_template_node_for_node(name):
    theirs, their_links = template_links(edit_subgraph(EDIT_TEMPLATES[name]))
    ours, links = our_links(edit_workflow(name))
    assert set(ours) == set(theirs)
    # As many of each (two text encoders for Qwen's CFG, two ReferenceLatents for klein's), and one
    # KSampler (klein's CFGGuider and SamplerCustomAdvanced are both its KSampler).
    assert {k: len(v) for k, v in ours.items()} == {k: 1 if k == "KSampler" else len(v) for k, v in theirs.items()}
    # Link for link, but for the ones through the nodes left out (the source's scaling): the
    # template feeds VAEEncode and the encoders from FluxKontextImageScale, reverie from LoadImage.
    assert links == their_links


def loader_files(widgets: dict) -> dict:
    return {"unet": widgets["UNETLoader"][0][0],
            "clip": widgets.get("CLIPLoader", widgets.get("DualCLIPLoader"))[0][:2],
            "vae": widgets["VAELoader"][0][0]}


def test_the_editors_settings_match_their_templates_or_differ_as_named():
    kontext, _ = template_links(edit_subgraph(EDIT_TEMPLATES["flux1-kontext-dev"]))
    ours, _ = our_links(edit_workflow("flux1-kontext-dev"))
    assert loader_files(kontext) == {"unet": ours["UNETLoader"][0]["unet_name"], "vae": ours["VAELoader"][0]["vae_name"],
                                     "clip": [ours["DualCLIPLoader"][0]["clip_name1"], ours["DualCLIPLoader"][0]["clip_name2"]]}
    assert kontext["FluxGuidance"][0] == [ours["FluxGuidance"][0]["guidance"]] == [2.5]
    _, _, steps, cfg, sampler, scheduler, denoise = kontext["KSampler"][0]
    k = ours["KSampler"][0]
    assert (cfg, sampler, scheduler, denoise) == (k["cfg"], k["sampler_name"], k["scheduler"], k["denoise"])
    assert (steps, k["steps"]) == (20, 28) and "28" in " ".join(EDIT_DIFFERENCES["flux1-kontext-dev"])

    qwen, _ = template_links(edit_subgraph(EDIT_TEMPLATES["qwen-image-edit-2511"]))
    ours, _ = our_links(edit_workflow("qwen-image-edit-2511"))
    assert qwen["ModelSamplingAuraFlow"][0] == [pytest.approx(ours["ModelSamplingAuraFlow"][0]["shift"])]
    assert qwen["CFGNorm"][0][0] == ours["CFGNorm"][0]["strength"]
    assert {w[0] for w in qwen["FluxKontextMultiReferenceLatentMethod"]} == \
        {n["reference_latents_method"] for n in ours["FluxKontextMultiReferenceLatentMethod"]}
    assert qwen["CLIPLoader"][0][:2] == [ours["CLIPLoader"][0]["clip_name"], ours["CLIPLoader"][0]["type"]]
    assert qwen["VAELoader"][0] == [ours["VAELoader"][0]["vae_name"]]
    _, _, steps, _, sampler, scheduler, denoise = qwen["KSampler"][0]
    k = ours["KSampler"][0]
    assert (steps, sampler, scheduler, denoise) == (k["steps"], k["sampler_name"], k["scheduler"], k["denoise"])
    # The template's CFG comes through its LoRA switch: off, it is the PrimitiveFloat of 4 (its
    # KSampler widget's 3 is stale under the link), the profile's true-CFG 4.
    assert k["cfg"] == 4.0
    # The weights: the profile's bf16 file where the template loads the fp8mixed one.
    assert (qwen["UNETLoader"][0][0], ours["UNETLoader"][0]["unet_name"]) == \
        ("qwen_image_edit_2511_fp8mixed.safetensors", "qwen_image_edit_2511_bf16.safetensors")

    klein, _ = template_links(edit_subgraph(EDIT_TEMPLATES["flux2-klein-4b"]))
    ours, _ = our_links(edit_workflow("flux2-klein-4b"))
    assert klein["CLIPLoader"][0][:2] == [ours["CLIPLoader"][0]["clip_name"], ours["CLIPLoader"][0]["type"]]
    assert klein["VAELoader"][0] == [ours["VAELoader"][0]["vae_name"]]
    assert sorted(klein["KSampler"]) == [[], [1]]  # CFGGuider(cfg 1), SamplerCustomAdvanced: one KSampler at CFG 1
    assert ours["KSampler"][0]["cfg"] == 1.0 and ours["KSampler"][0]["sampler_name"] == "euler"
    assert any("KSampler form" in d for d in EDIT_DIFFERENCES["flux2-klein-4b"])


def test_z_image_img2img_and_inpainting_follow_the_text_to_image_template_and_the_inpainting_nodes():
    """No official Z-Image img2img/inpainting template: the loaders, shift and sampler are the
    text-to-image template's, the latent is the source's, and the mask nodes are wired as the
    Qwen-Image inpainting template wires them."""
    t = json.loads((files(templates) / "templates" / EDIT_TEMPLATES["z-image-turbo"]).read_text())
    t2i, _ = template_links(t["definitions"]["subgraphs"][0])
    img2img, _ = our_links(edit_workflow("z-image-turbo"))
    assert set(img2img) == set(t2i) - {"EmptySD3LatentImage"} | {"VAEEncode"}
    assert img2img["KSampler"][0]["denoise"] == 0.6  # the source's strength
    inpaint, links = our_links(edit_workflow("z-image-turbo", mask=True))
    assert set(inpaint) == set(img2img) | {"LoadImageMask", "SetLatentNoiseMask", "ImageCompositeMasked"}
    qwen_inpaint = json.loads((files(templates) / "templates" / "image_qwen_image_instantx_inpainting_controlnet.json").read_text())
    _, their_links = template_links(qwen_inpaint)
    for link in [("VAEEncode", "SetLatentNoiseMask", "samples"), ("VAEDecode", "ImageCompositeMasked", "source")]:
        assert link in their_links and link in links
    assert ("SetLatentNoiseMask", "KSampler", "latent_image") in links
    assert inpaint["LoadImageMask"][0]["channel"] == "red"  # white = change, as reverie's masks are


def test_the_preflight_names_an_editors_nodes_and_files():
    from reverie.render.comfy_preflight import missing
    from reverie.render.comfyui import preflight_workflow
    from tests.comfy_server import NODES, ComfyServer

    with ComfyServer(models={"unet_name": [], "clip_name": [], "vae_name": []}) as s:
        nodes = s.object_info()
    profile = get_profile("qwen-image-edit-2511")
    names = comfy_files(profile)
    lacks = missing({k: v for k, v in nodes.items() if k != "TextEncodeQwenImageEditPlus"},
                    [preflight_workflow(profile, names)], names)
    assert lacks[0] == "unet file qwen_image_edit_2511_bf16.safetensors (put it in models/diffusion_models or pass --comfy-file unet=NAME)"
    assert "node TextEncodeQwenImageEditPlus (update ComfyUI)" in lacks
    assert any(x.startswith("vae file qwen_image_vae.safetensors") for x in lacks)
    assert "TextEncodeQwenImageEditPlus" in NODES
