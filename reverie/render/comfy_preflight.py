"""Preflight: what a ComfyUI server lacks to run reverie's workflows, all of it in one line.

A server's /object_info lists every node class it has and, for each input that is a list of
choices, the choices: the model files in each models/ folder, the samplers, the schedulers,
the loader types. Checking a workflow against it before the first POST /prompt names every
missing piece at once, instead of one failed run per missing file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

# Where ComfyUI looks for the file each loader names.
MODEL_FOLDERS = {
    "UNETLoader": "models/diffusion_models",
    "CLIPLoader": "models/text_encoders",
    "DualCLIPLoader": "models/text_encoders",
    "VAELoader": "models/vae",
    "CheckpointLoaderSimple": "models/checkpoints",
    "ControlNetLoader": "models/controlnet",
    "ModelPatchLoader": "models/model_patches",
}
FILE_INPUTS = ("unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "control_net_name", "name")


@dataclass(frozen=True)
class ServerInfo:
    """What one server said about itself: its version and its /object_info."""

    url: str
    version: str
    nodes: dict

    @property
    def worker(self) -> str:
        """How lineage names this server: its address and ComfyUI version."""
        return f"{self.url} (ComfyUI {self.version})"


def choices(spec) -> Optional[list]:
    """The choices of an /object_info input, in either of ComfyUI's two spellings, or None."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):  # [["a.safetensors", ...], {...}]
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):  # ["COMBO", {"options": [...]}]
        return list(spec[1].get("options") or [])
    return None


def file_key(files: dict, value: str, input_name: str) -> str:
    """The --comfy-file key that names a file (the input's own name when no key does)."""
    return next((k for k, v in files.items() if v == value), input_name)


def missing_file(files: dict, class_type: str, input_name: str, value: str) -> str:
    key = file_key(files, value, input_name)
    return f"{key} file {value} (put it in {MODEL_FOLDERS[class_type]} or pass --comfy-file {key}=NAME)"


def missing(nodes: dict, workflows: Iterable[dict], files: dict) -> list[str]:
    """Every node class, model file, sampler, scheduler or loader setting the server lacks."""
    found: list[str] = []

    def add(item: str) -> None:
        if item not in found:
            found.append(item)

    for workflow in workflows:
        for node in workflow.values():
            cls, inputs = node["class_type"], node["inputs"]
            if cls not in nodes:
                add(f"node {cls} (update ComfyUI)")
                continue
            spec = nodes[cls].get("input") or {}
            known = {**(spec.get("optional") or {}), **(spec.get("required") or {})}
            for name, value in inputs.items():
                if isinstance(value, list) or cls in ("LoadImage", "LoadImageMask"):
                    continue  # links, and control images that are uploaded when they are used
                options = choices(known.get(name))
                if options is None or value in options:
                    continue
                if cls in MODEL_FOLDERS and name in FILE_INPUTS:
                    add(missing_file(files, cls, name, value))
                elif name == "sampler_name":
                    add(f"sampler {value} (update ComfyUI)")
                elif name == "scheduler":
                    add(f"scheduler {value} (update ComfyUI)")
                else:
                    add(f"{cls} {name} {value} (update ComfyUI)")
    return found


def verdict(info: ServerInfo, what: str, lacks: list[str]) -> str:
    """The one line for a server that cannot run `what`."""
    return f"ComfyUI at {info.url} cannot run {what}: it lacks " + "; ".join(lacks)
