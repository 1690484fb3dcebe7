"""The dreamer expander: an LLM turns a terse idea into k rich, faithful prompts in the profile's style.

Natural-language paragraphs for the flow transformers (Z-Image, FLUX, Qwen-Image, Chroma, SD3.5,
Krea 2), with each family's advice from reverie.profiles; weighted tags plus a negative prompt for
SDXL, Pony and SD1.5. With no usable LLM answer it falls back to the offline expander and says
why once.
"""

from __future__ import annotations

from typing import Callable, Optional

from pydantic import BaseModel, Field

from reverie.agents.llm import LLMClient, LLMUnavailable, max_tokens_for
from reverie.agents.prompt_check import missing_quotes, prompt_problem, quoted_text  # noqa: F401 (named here before)
from reverie.profiles import Profile
from reverie.types import Expansion, sha256_text

NoticeFn = Callable[[str], None]

DREAMER_NATURAL = """\
You are a dreamer who paints with words. Your head is full of weather, old films and far \
horizons, yet your hands are disciplined: you turn a person's short idea into one precise, \
visual description that a text-to-image model can render without guessing.

Rules:
- Stay faithful to the idea. Keep every subject, count, colour, action and relation the person \
asked for; never swap the subject for something you find more interesting.
- Fill in what the idea leaves open with concrete, visible detail, in this order: the main \
subject (appearance, material, pose, expression); secondary objects; the environment; a style \
reference; the medium (photograph with camera and lens, oil painting, watercolor, 3D render, \
...); composition and framing; lighting; colour palette; mood.
- Describe only what can be seen. No metaphors the model cannot draw, no lists of adjectives \
without nouns, no quality buzzwords such as "masterpiece" or "8k".
- Do not add any writing, signs, captions, logos or watermarks unless the idea asks for text. \
Text the person quotes ("...", “...”, «...», 「...」) is copied verbatim, in its original \
language and script, and you say where it appears and how it is lettered.
- One flowing paragraph of 80 to 150 words per prompt.
- {language}
{advice}
When asked for several prompts, each must be a different interpretation of the idea - another \
moment, setting, medium, viewpoint or mood - not a paraphrase of the first.

Answer with a JSON object only:
{{"expansions": [{{"interpretation": "<one short line: what this reading chooses>", "prompt": "<the paragraph>"}}]}}
"""

DREAMER_TAGS = """\
You are a dreamer who thinks in images and speaks in tags. You turn a person's short idea into \
prompts for a {family} image model that reads comma-separated tags, not sentences.

Rules:
- Stay faithful to the idea: every subject, count, colour and action asked for appears as tags.
- Order: subject tags first, then appearance, pose and expression, secondary objects, \
environment, medium and style, composition and framing, lighting, colour, mood.
- Weight the two or three tags that matter most with the (tag:1.2) syntax, weights between 1.1 \
and 1.4. Do not weight everything.
- Start the prompt with these quality tags, exactly: {quality}
- Give a negative prompt as tags: what must not appear (defects, unwanted objects or styles \
that this idea invites). Never put the idea's own subject in the negative.
- No text, logos or watermarks unless the idea asks for text; quoted text is kept verbatim.
- 25 to 60 tags in English.

When asked for several prompts, each must be a different interpretation of the idea - another \
setting, medium, viewpoint or mood - not a reshuffle of the same tags.

Answer with a JSON object only:
{{"expansions": [{{"interpretation": "<one short line: what this reading chooses>", "prompt": "<tags>", "negative": "<tags>"}}]}}
"""

LANGUAGE_ENGLISH = "Write in English whatever language the idea is in; quoted text stays verbatim in its own language."
LANGUAGE_BILINGUAL = ("Write in English, or in Chinese when the idea is written in Chinese (this model reads both); "
                   "quoted text stays verbatim in its own language.")



def system_prompt(profile: Profile) -> str:
    if profile.prompt_style == "tags":
        return DREAMER_TAGS.format(family=profile.family.upper(), quality=profile.quality_tags or "(none)")
    language = LANGUAGE_BILINGUAL if profile.traits.reads_chinese else LANGUAGE_ENGLISH
    advice = profile.traits.prompt_advice
    return DREAMER_NATURAL.format(language=language, advice=f"- {advice}\n" if advice else "")


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def finish_prompt(profile: Profile, prompt: str, negative: str) -> tuple[str, str]:
    """Make an LLM prompt safe for the profile: quality tags and a negative for tag models, none
    for models that ignore negatives."""
    prompt = " ".join(prompt.split())
    if profile.prompt_style != "tags":
        # Paragraph models that run real CFG (Qwen-Image, Chroma) keep their authors' negative.
        return prompt, profile.default_negative if profile.negative else ""
    quality = _tags(profile.quality_tags)
    body = [t for t in _tags(prompt) if t not in quality]
    merged_negative = list(dict.fromkeys(_tags(negative) + _tags(profile.default_negative)))
    return ", ".join(quality + body), ", ".join(merged_negative)


class Interpretation(BaseModel):
    interpretation: str = ""
    prompt: str = Field(min_length=1)
    negative: str = ""


class Dreams(BaseModel):
    expansions: list[Interpretation] = Field(min_length=1)


def dreams_schema(k: int) -> dict:
    """The Dreams schema asking for exactly k readings: a shorter answer is padded, but a server
    that constrains its output to the schema should never give one."""
    schema = Dreams.model_json_schema()
    schema["properties"]["expansions"].update(minItems=k, maxItems=k)
    return schema


def user_message(idea: str, profile: Profile, k: int) -> str:
    count = "one prompt" if k == 1 else f"{k} prompts, each a different interpretation"
    return f"Model: {profile.name}.\nIdea: {idea}\nWrite {count}."


class DreamerExpander:
    """The Expander protocol over an LLM, with a fallback expander for when the LLM fails."""

    name = "dreamer"

    def __init__(self, llm: LLMClient, fallback, notice: Optional[NoticeFn] = None):
        self.llm = llm
        self.fallback = fallback
        self.notice = notice or (lambda message: None)
        self._told = False

    def expand(self, idea: str, profile: Profile, k: int = 1, seed: int = 0) -> list[Expansion]:
        system = system_prompt(profile)
        system_hash = sha256_text(system)

        def check(dreams: Dreams) -> str:
            return next((p for p in (prompt_problem(idea, d.prompt) for d in dreams.expansions[:k]) if p), "")

        try:
            dreams = self.llm.structured(system, user_message(idea, profile, k), Dreams, purpose="expand",
                                         system_hash=system_hash, temperature=0.9, check=check,
                                         json_schema=dreams_schema(k),
                                         max_tokens=max_tokens_for(self.llm.settings, "expand", k), seed=seed)
        except LLMUnavailable as e:
            self.fall_back(str(e))
            return self.fallback.expand(idea, profile, k=k, seed=seed)
        out = []
        for d in dreams.expansions[:k]:
            prompt, negative = finish_prompt(profile, d.prompt, d.negative)
            out.append(Expansion(prompt=prompt, negative=negative, source="dreamer", model=self.llm.model,
                                 system_hash=system_hash, reason=d.interpretation.strip()))
        if len(out) < k:  # a short answer: the rest come from the offline expander, labelled as such
            self.notice(f"the LLM wrote {len(out)} of the {k} prompts asked for; "
                        f"the other {k - len(out)} come from the offline formula expander")
            out += self.fallback.expand(idea, profile, k=k - len(out), seed=seed + len(out))
        return out

    def fall_back(self, why: str) -> None:
        if not self._told:
            self._told = True
            self.notice(f"LLM unusable, using the offline formula expander and rule critic: {why}")
