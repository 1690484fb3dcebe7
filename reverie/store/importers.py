"""Recipes from other tools' PNGs: A1111 `parameters` text and ComfyUI `prompt` (API workflow JSON).

Both become a RenderSpec, so an image made elsewhere can be looked at, re-rendered and iterated
on. The model is a guess from the checkpoint name; pixels from another program never match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from reverie.profiles import family_of, guess_profile
from reverie.store.pngmeta import SAMPLER_NAMES
from reverie.types import RenderSpec, ReverieError

# "Euler a" -> "euler_ancestral" and so on; A1111 and ComfyUI names both land on ours.
_SAMPLERS = {v.lower(): k for k, v in SAMPLER_NAMES.items()} | {k: k for k in SAMPLER_NAMES}

# key: value pairs of the last A1111 line; values may be quoted and contain commas.
_PAIR = re.compile(r'\s*([\w][\w \-/]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


@dataclass(frozen=True)
class ForeignRecipe:
    source: str  # "a1111" | "comfyui"
    spec: RenderSpec
    model: str  # the checkpoint name as the other tool recorded it
    extra: dict[str, Any]


def _guidance(profile: str, cfg: float) -> float:
    family = family_of(profile)
    return family.guidance(cfg) if family else cfg


def _sampler(name: str) -> str:
    key = (name or "euler").strip().lower()
    return _SAMPLERS.get(key, key.replace(" ", "_"))


def parse_a1111(text: str) -> ForeignRecipe:
    """The `parameters` chunk: prompt lines, an optional `Negative prompt:` line, then one line
    of `Key: value` pairs."""
    lines = text.strip().split("\n")
    fields: dict[str, str] = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:
        fields = {k.strip(): v.strip().strip('"') for k, v in _PAIR.findall(lines.pop())}
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    if "Seed" not in fields and "Steps" not in fields:
        raise ReverieError("the `parameters` text has no `Steps: …, Seed: …` line: it was not written by A1111 or a compatible tool")
    model = fields.get("Model", "")
    profile = guess_profile(model)
    width, height = 512, 512
    if "x" in fields.get("Size", ""):
        width, height = (int(v) for v in fields["Size"].split("x", 1))
    try:
        spec = RenderSpec(
            prompt="\n".join(prompt_lines).strip(),
            negative="\n".join(negative_lines).strip(),
            seed=int(fields.get("Seed", 0)),
            width=width,
            height=height,
            steps=int(fields.get("Steps", 20)),
            guidance=_guidance(profile, float(fields.get("CFG scale", 7.0))),
            profile=profile,
            sampler=_sampler(fields.get("Sampler", "euler")),
            shift=float(fields["Shift"]) if "Shift" in fields else None,
            blind_steps=int(fields.get("Blind steps", 0)),
            handoff_steps=int(fields.get("Handoff steps", 0)),
        )
    except ValueError as e:
        raise ReverieError(f"the A1111 parameters have a value that is not a number ({e})") from None
    return ForeignRecipe("a1111", spec, model, {k: v for k, v in fields.items() if k not in _KNOWN_A1111})


_KNOWN_A1111 = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Shift", "Blind steps", "Handoff steps"}


def _text_of(graph: dict, link: Any, depth: int = 0) -> str:
    """Follow a [node_id, output] link to the text a CLIPTextEncode (or a primitive) holds."""
    if isinstance(link, str):
        return link
    if not isinstance(link, list) or not link or depth > 8:
        return ""
    node = graph.get(str(link[0])) or {}
    inputs = node.get("inputs", {})
    for key in ("text", "text_g", "prompt", "string", "value", "conditioning", "positive"):
        if key in inputs:
            return _text_of(graph, inputs[key], depth + 1)
    return ""


def _input(graph: dict, node: dict, key: str, default: Any = None) -> Any:
    value = node.get("inputs", {}).get(key, default)
    if isinstance(value, list) and value:  # a link to a primitive node
        src = graph.get(str(value[0]), {}).get("inputs", {})
        value = next((v for v in src.values() if not isinstance(v, list)), default)
    return value


def parse_comfyui(text: str) -> ForeignRecipe:
    """The `prompt` chunk: ComfyUI's API workflow, {node id: {class_type, inputs}}."""
    try:
        graph = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReverieError(f"the ComfyUI `prompt` chunk is not JSON ({e.msg})") from None
    if not isinstance(graph, dict):
        raise ReverieError("the ComfyUI `prompt` chunk is not an API workflow (expected an object of nodes)")
    nodes = {k: v for k, v in graph.items() if isinstance(v, dict) and "class_type" in v}
    samplers = sorted((k for k, v in nodes.items() if v["class_type"].startswith("KSampler")), key=_node_order)
    if not samplers:
        raise ReverieError("the ComfyUI workflow has no KSampler node: reverie cannot tell how the image was made")
    main = nodes[samplers[-1]]  # with blind steps, the last sampler sees the real prompt
    first = nodes[samplers[0]]
    blind = 0
    if len(samplers) > 1 and first["class_type"] == "KSamplerAdvanced":
        blind = int(_input(nodes, first, "end_at_step", 0) or 0)
    latent = _follow(nodes, main.get("inputs", {}).get("latent_image"), ("width", "height"))
    loader = next((v for v in nodes.values() if v["class_type"] in ("CheckpointLoaderSimple", "UNETLoader", "CheckpointLoader")), {})
    model = loader.get("inputs", {}).get("ckpt_name") or loader.get("inputs", {}).get("unet_name") or ""
    shift_node = next((v for v in nodes.values() if v["class_type"].startswith("ModelSampling")), None)
    profile = guess_profile(str(model))
    seed = _input(nodes, main, "seed", None)
    if seed is None:
        seed = _input(nodes, main, "noise_seed", 0)
    try:
        spec = RenderSpec(
            prompt=_text_of(nodes, main.get("inputs", {}).get("positive")).strip(),
            negative=_text_of(nodes, main.get("inputs", {}).get("negative")).strip(),
            seed=int(seed),
            width=int(latent.get("width", 1024)),
            height=int(latent.get("height", 1024)),
            steps=int(_input(nodes, main, "steps", 20)),
            guidance=_guidance(profile, float(_input(nodes, main, "cfg", 7.0))),
            profile=profile,
            sampler=_sampler(str(_input(nodes, main, "sampler_name", "euler"))),
            shift=float(shift_node["inputs"]["shift"]) if shift_node and "shift" in shift_node.get("inputs", {}) else None,
            blind_steps=blind,
        )
    except (TypeError, ValueError) as e:
        raise ReverieError(f"the ComfyUI workflow has a value reverie cannot read ({e})") from None
    return ForeignRecipe("comfyui", spec, str(model), {"scheduler": _input(nodes, main, "scheduler", "")})


def _node_order(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _follow(nodes: dict, link: Any, keys: tuple[str, ...]) -> dict:
    """The inputs of the first node up a link chain that has all `keys` (e.g. the latent size)."""
    seen = 0
    while isinstance(link, list) and link and seen < 8:
        node = nodes.get(str(link[0]), {})
        inputs = node.get("inputs", {})
        if all(k in inputs for k in keys):
            return {k: _input(nodes, node, k) for k in keys}
        link = next((v for v in inputs.values() if isinstance(v, list)), None)
        seen += 1
    return {}


def import_metadata(text_chunks: dict[str, Optional[str]]) -> Optional[ForeignRecipe]:
    """A recipe from a foreign PNG's text chunks (ComfyUI first: it is the more exact), or None."""
    if text_chunks.get("prompt"):
        try:
            return parse_comfyui(text_chunks["prompt"])
        except ReverieError:
            if not text_chunks.get("parameters"):
                raise
    if text_chunks.get("parameters"):
        return parse_a1111(text_chunks["parameters"])
    return None
