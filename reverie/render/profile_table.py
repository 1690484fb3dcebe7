"""The profile tables of README.md and docs/models.md, written from reverie.profiles.

Both pages paste this output; tests/test_profile_table.py fails when a page and the profiles
disagree. `python -m reverie.render.profile_table` prints the README's compact table,
`--full` the one in docs/models.md.
"""

from __future__ import annotations

import sys

from reverie.profiles import PROFILES, Profile
from reverie.render.resolution import size_for

README_HEADER = ("| profile | family | steps | CFG (ComfyUI) | size at 1 MP | source |\n"
                 "|---|---|---|---|---|---|")
FULL_HEADER = ("| profile | family | diffusers pipeline | hub repo | steps | guidance (diffusers) | ComfyUI CFG | sampler "
               "| shift | negative | size rule | ComfyUI files | source |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _source_link(p: Profile) -> str:
    url = p.source_url or (f"https://hf.co/{p.repo_id}" if p.repo_id else "")
    if not url:
        return "-"
    return f"[{'card' if url.startswith('https://hf.co/') else 'README'}]({url})"


def _cfg(p: Profile) -> str:
    # What a ComfyUI user types into the KSampler; FLUX's distilled guidance goes in FluxGuidance instead.
    cfg = f"{p.comfy_cfg:g}"
    return f"{cfg} (FluxGuidance {p.guidance:g})" if p.traits.distilled_guidance and p.guidance else cfg


def readme_row(p: Profile) -> str:
    w, h = size_for("1:1", 1.0, p.multiple, p.max_side, buckets=p.traits.buckets)
    return f"| `{p.name}` | {p.traits.label} | {p.steps} | {_cfg(p)} | {w}x{h} | {_source_link(p)} |"


def full_row(p: Profile) -> str:
    repo = p.repo_id or "single file (--model-path)"
    if p.gated:
        repo += " (gated)"
    shift = "by resolution" if p.shift is None and p.traits.flow else ("-" if p.shift is None else f"{p.shift}")
    files = ", ".join(f"{k}={v}" for k, v in p.comfy_files.items() if k in ("unet", "clip", "vae", "checkpoint"))
    return (f"| `{p.name}` | {p.traits.label} | {p.pipeline} | {repo} | {p.steps} | {p.guidance} | {float(p.comfy_cfg)} "
            f"| {p.sampler} | {shift} | {'yes' if p.negative else 'no'} | x{p.multiple}, max {p.max_side} | {files} "
            f"| {p.source or '-'} |")


def markdown_table(full: bool = False) -> str:
    """Every profile, one line each: the README's compact table, or docs/models.md's full one."""
    rows = [full_row(p) if full else readme_row(p) for p in PROFILES.values()]
    return "\n".join([FULL_HEADER if full else README_HEADER, *rows])


if __name__ == "__main__":
    print(markdown_table(full="--full" in sys.argv[1:]))
