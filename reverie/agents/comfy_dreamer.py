"""The TextGenerate dreamer: the image model's own text encoder writes the prompts.

ComfyUI's TextGenerate node runs a loaded text encoder as a language model. Z-Image's encoder
is Qwen3-4B, so a ComfyUI server set up for Z-Image can expand ideas with no LLM server and no
extra download. The HTTP side lives with the engine (reverie.render.comfyui.TextGenerator);
this side only needs a callable `generate(prompt, max_length, sampling) -> text` with `model`
and `base_url` attributes, and asks for one plain paragraph per call: a 4B model writes a
paragraph far more reliably than a JSON document.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Optional

from reverie.agents.dreamer import finish_prompt
from reverie.agents.prompt_check import prompt_problem
from reverie.types import Expansion, ReverieError, canonical_json, sha256_text

INSTRUCTION = """\
Rewrite the idea below as one prompt for a text-to-image model: a single flowing paragraph of \
60 to 120 words describing only what can be seen. Keep every subject, count, colour and action \
of the idea; fill in the rest with concrete detail: appearance, setting, medium (photograph with \
camera and lens, painting, 3D render, ...), composition, lighting, colours and mood. No writing \
or logos unless the idea asks for text; quoted text is copied exactly. {variation}\
Answer with the paragraph only, no title, no quotes, no explanation.

Idea: {idea}"""

VARIATION = "This is reading {i} of {k}: choose a moment, setting, medium or mood of your own. "

# TextGenerate's defaults for its "on" sampling mode, with a warmer temperature for variety.
SAMPLING = {"temperature": 0.9, "top_k": 64, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.05}
MAX_LENGTH = 320

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:prompt|paragraph|image prompt)\s*:?\s*(?:\*\*)?\s*:?\s*", re.IGNORECASE)


def clean_answer(text: str, idea: str) -> tuple[str, str]:
    """(the paragraph, "") or ("", why it is unusable)."""
    text = _THINK.sub("", text or "").replace("<think>", "").replace("</think>", "")
    text = _LABEL.sub("", text.strip())
    text = " ".join(text.split()).strip().strip('"“”').strip()
    problem = prompt_problem(idea, text)  # the same check as every other prompt writer's
    return ("", problem) if problem else (text, "")


class TextGenerateExpander:
    """The Expander protocol over TextGenerate; an unusable answer falls back, saying why once."""

    name = "textgen"

    def __init__(self, generate: Callable[[str, int, dict], str], fallback, notice: Optional[Callable[[str], None]] = None,
                 record: Optional[Callable[[dict], None]] = None):
        self.generate = generate
        self.fallback = fallback
        self.notice = notice or (lambda message: None)
        self.record = record or (lambda call: None)
        self.model = getattr(generate, "model", "ComfyUI TextGenerate")
        self.dead = ""  # the server failed: the rest of the run uses the fallback without asking
        self._told = False

    def expand(self, idea, profile, k: int = 1, seed: int = 0) -> list[Expansion]:
        out: list[Expansion] = []
        system_hash = sha256_text(INSTRUCTION)
        for i in range(k):
            if self.dead:
                return out + self.fallback.expand(idea, profile, k=k - i, seed=seed + i)
            variation = VARIATION.format(i=i + 1, k=k) if k > 1 else ""
            ask = INSTRUCTION.format(idea=idea, variation=variation)
            sampling = {**SAMPLING, "seed": seed + i}
            call = {"purpose": "expand", "model": self.model, "base_url": getattr(self.generate, "base_url", ""),
                    "backend": "textgen", "seed": seed + i,
                    "system_hash": system_hash, "response_text": "",
                    "request_json": canonical_json({"node": "TextGenerate", "prompt": ask, "max_length": MAX_LENGTH,
                                                    "sampling_mode": "on", "sampling": sampling, "thinking": False})}
            started = time.monotonic()
            try:
                text = self.generate(ask, MAX_LENGTH, sampling)
            except ReverieError as e:
                self.dead = str(e)
                self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": self.dead})
                self.fall_back(self.dead)
                return out + self.fallback.expand(idea, profile, k=k - i, seed=seed + i)
            prompt, problem = clean_answer(text, idea)
            self.record({**call, "seconds": time.monotonic() - started, "response_text": text, "ok": not problem,
                         "error": problem})
            if problem:
                self.fall_back(problem)
                out += self.fallback.expand(idea, profile, k=1, seed=seed + i)
                continue
            prompt, negative = finish_prompt(profile, prompt, "")
            out.append(Expansion(prompt=prompt, negative=negative, source="textgen", model=self.model,
                                 system_hash=system_hash, reason=f"TextGenerate, seed {seed + i}"))
        return out

    def fall_back(self, why: str) -> None:
        if not self._told:
            self._told = True
            self.notice(f"TextGenerate answer unusable, using the offline formula expander where it fails: {why}")


def comfy_expander(engine, fallback, notice: Optional[Callable[[str], None]] = None,
                   record: Optional[Callable[[dict], None]] = None) -> Optional[TextGenerateExpander]:
    """The TextGenerate dreamer when the engine is ComfyUI and a server has TextGenerate and the
    profile's text encoder; None otherwise (the caller keeps its formula expander)."""
    make = getattr(engine, "text_generator", None)
    generate = make() if callable(make) else None
    if generate is None:
        return None
    return TextGenerateExpander(generate, fallback, notice=notice, record=record)
