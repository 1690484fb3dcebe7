"""The critic: after a round, what to try next. This is the rule-based (offline) critic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel, Field, model_validator

from reverie.types import Expansion, canonical_json, sha256_text


@dataclass(frozen=True)
class Critique:
    action: str  # "more_seeds" | "variety" | "revise" | "edit"
    reason: str
    expansion: Optional[Expansion] = None
    # For "edit": the flaw of the best image as an instruction to an image editor ("remove the extra finger").
    edit: str = ""


def rule_critic(
    prompt: Expansion,
    round_best: float,
    previous_best: Optional[float],
    similarity: float,
    similarity_threshold: float = 0.9,
    stall_margin: float = 0.005,
) -> Critique:
    """More seeds while the scores climb; variety knobs when candidates look alike; a revised
    prompt when the scores stall."""
    if similarity >= similarity_threshold:
        return Critique("variety", f"candidates are too alike (mean cosine {similarity:.2f}): more shift, blind steps and embedding noise")
    if previous_best is not None and round_best <= previous_best + stall_margin:
        return Critique("revise", f"scores stalled at {round_best:.3f}: try a different interpretation of the idea")
    return Critique("more_seeds", "scores are still improving: more seeds of the same prompt")


CRITIC_SYSTEM = """\
You are the art director of an image-generation loop. After each round you see the person's \
idea, the prompt that was rendered, and the scores of the images (composite is what counts; \
faithfulness says how well an image matches the idea; similarity says how alike the images are). \
Decide the single best next step:
- "more_seeds": the prompt works and scores are still rising; render more seeds of it.
- "variety": the images are too alike; keep the prompt and turn the variety knobs.
- "revise": the prompt holds the images back; write a better prompt.
When a vision judge looked at the best images, its notes ("judge") say what is wrong with them: \
a revision should fix those faults. Give a one-sentence reason that names the evidence. When you revise, the new prompt stays \
faithful to the idea, changes what the scores suggest is weak, and follows the same style as \
the current prompt ({style}). Keep quoted text verbatim. No invented text or logos.

Answer with a JSON object only:
{{"action": "more_seeds" | "variety" | "revise", "reason": "<one sentence>", "prompt": "<the revised prompt, only for revise>", "negative": "<negative tags, only for tag-style models>"}}
"""

# Added to the system prompt when the loop can repair the best image with an image editor.
CRITIC_EDIT = """One more action is open: "edit". When the best image is close to the idea but has one fixable flaw (a wrong colour, an extra object, a missing detail the judge names), state the fix as a short instruction to an image editor in "edit" ("remove the second moon", "make the coat red"); the next round edits that image instead of drawing new ones. Use it only for a flaw an edit can fix.
"""

STYLE_NATURAL = "one flowing paragraph of 80 to 150 words of concrete visual description"
STYLE_TAGS = "comma-separated tags with a few (tag:1.2) weights, quality tags first, and a negative prompt"


class CriticAnswer(BaseModel):
    action: Literal["more_seeds", "variety", "revise", "edit"]
    reason: str = Field(min_length=1)
    prompt: str = ""
    negative: str = ""
    edit: str = ""

    @model_validator(mode="after")
    def _revise_has_a_prompt(self) -> "CriticAnswer":
        if self.action == "revise" and not self.prompt.strip():
            raise ValueError("a revise answer needs the revised prompt")
        if self.action == "edit" and not self.edit.strip():
            raise ValueError("an edit answer needs the instruction in `edit`")
        return self


def critic_schema(can_edit: bool = False) -> dict:
    """CriticAnswer's schema plus what its validator requires: `prompt` when the action is revise.
    A oneOf, which grammar-constrained servers (llama.cpp, vLLM, Ollama) turn into a grammar;
    if/then is ignored by most of them."""
    base = CriticAnswer.model_json_schema()
    props = base["properties"]
    keep = {k: props[k] for k in ("reason", "negative")}
    return {
        "title": base.get("title", "CriticAnswer"),
        "oneOf": [
            {"type": "object", "required": ["action", "reason"],
             "properties": {"action": {"type": "string", "enum": ["more_seeds", "variety"]}, **keep,
                            "prompt": {"type": "string"}}},
            {"type": "object", "required": ["action", "reason", "prompt"],
             "properties": {"action": {"type": "string", "const": "revise"}, **keep,
                            "prompt": {"type": "string", "minLength": 1}}},
        ] + ([{"type": "object", "required": ["action", "reason", "edit"],
               "properties": {"action": {"type": "string", "const": "edit"}, "reason": props["reason"],
                              "edit": {"type": "string", "minLength": 1}}}] if can_edit else []),
    }


class LLMCritic:
    """The critic over an LLM; when the LLM gives no usable answer, the fallback critic decides."""

    name = "llm"

    def __init__(self, llm, fallback, notice=None):
        self.llm = llm
        self.fallback = fallback
        self.notice = notice or (lambda message: None)

    def critique(self, idea, expansion, profile, round_best, previous_best, similarity, details,
                 feedback: str = "", can_edit: bool = False) -> Critique:
        """`feedback`: what a VLM judge found wrong with the best images, for the revision (or, with
        `can_edit`, for an edit instruction that fixes the best one)."""
        from reverie.agents.dreamer import finish_prompt
        from reverie.agents.prompt_check import prompt_problem
        from reverie.agents.llm import LLMUnavailable

        style = STYLE_TAGS if profile.prompt_style == "tags" else STYLE_NATURAL
        if profile.prompt_style != "tags" and profile.traits.prompt_advice:
            style = f"{style}; {profile.traits.prompt_advice}"
        system = CRITIC_SYSTEM.format(style=style)
        if can_edit:
            system += CRITIC_EDIT
        system_hash = sha256_text(system)
        report = {
            "idea": idea,
            "model": profile.name,
            "prompt": expansion.prompt,
            "negative": expansion.negative,
            "round_best": round(round_best, 4),
            "previous_best": None if previous_best is None else round(previous_best, 4),
            "similarity": round(similarity, 4),
            "images": details[:16],
        }
        if feedback:
            report["judge"] = feedback

        def check(answer: CriticAnswer) -> str:
            if answer.action == "edit" and not can_edit:
                return '"edit" is not open in this run: answer more_seeds, variety or revise'
            if answer.action != "revise":
                return ""
            return prompt_problem(idea, answer.prompt)

        try:
            answer = self.llm.structured(system, canonical_json(report), CriticAnswer, purpose="critique",
                                         system_hash=system_hash, temperature=0.4, check=check,
                                         json_schema=critic_schema(can_edit))
        except LLMUnavailable as e:
            self.notice(str(e))
            return self.fallback.critique(idea, expansion, profile, round_best, previous_best, similarity, details)
        reason = " ".join(answer.reason.split())
        if answer.action == "edit":
            return Critique("edit", reason, edit=" ".join(answer.edit.split()))
        if answer.action != "revise":
            return Critique(answer.action, reason)
        prompt, negative = finish_prompt(profile, answer.prompt, answer.negative)
        return Critique("revise", reason, Expansion(prompt=prompt, negative=negative, source="critic",
                                                    model=self.llm.model, system_hash=system_hash, reason=reason))
