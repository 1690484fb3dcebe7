"""The dreamer expander: an LLM turns a terse idea into k rich, faithful prompts in the profile's style.

Natural-language paragraphs for the flow transformers (Z-Image, FLUX, Qwen-Image, Chroma, SD3.5,
Krea 2), with each family's advice from reverie.profiles; weighted tags plus a negative prompt for
SDXL, Pony and SD1.5. With no usable LLM answer it falls back to the offline expander and says
why once.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Optional

from pydantic import BaseModel, Field

from reverie.agents.llm import LLMClient, LLMUnavailable, max_tokens_for
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

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|«([^»]+)»|「([^」]+)」|『([^』]+)』')


def system_prompt(profile: Profile) -> str:
    if profile.prompt_style == "tags":
        return DREAMER_TAGS.format(family=profile.family.upper(), quality=profile.quality_tags or "(none)")
    language = LANGUAGE_BILINGUAL if profile.traits.reads_chinese else LANGUAGE_ENGLISH
    advice = profile.traits.prompt_advice
    return DREAMER_NATURAL.format(language=language, advice=f"- {advice}\n" if advice else "")


def quoted_text(idea: str) -> list[str]:
    """The text a person quoted in the idea: it must reach the prompt letter for letter."""
    return [next(g for g in m.groups() if g) for m in _QUOTED.finditer(idea)]


def missing_quotes(idea: str, prompt: str) -> list[str]:
    return [q for q in quoted_text(idea) if q not in prompt]


# Words that say nothing about what is in the picture: an idea's other words are its content.
STOP_WORDS = frozenset("""
a an the and or but of in on at to by for from with without into onto over under near as is are was were be
been being it its this that these those his her their our my your some any one two very at about after before
behind between through while during against among up down out off than then there here where when which who
""".split())
# Function words of other languages: an idea in one of them is legitimately rendered by an English
# prompt that shares none of its words, so only the punctuation check applies to it.
FOREIGN_WORDS = frozenset("""
de la le les des du un une et dans sur sous avec pour der die das ein eine einer im und mit auf unter el los
las y con por para il lo gli di della nel sotto em na no os uma
""".split())
_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _same_word(a: str, b: str) -> bool:
    """fox ~ foxes, city ~ cities, rain ~ rainy: a shared stem, not a dictionary."""
    if a == b:
        return True
    shared = len(os.path.commonprefix([a, b]))
    return shared >= 3 and shared >= min(len(a), len(b)) - 1


MIN_PROMPT_WORDS = 3
MIN_PROMPT_LETTERS = 12


def prompt_problem(idea: str, prompt: str) -> str:
    """Why an LLM's prompt cannot be what the idea asked for ("" when it may be): mostly
    punctuation (a reply of `}]}{`), too short, in another script than an English idea's, or, for
    an English idea, not one of the idea's words."""
    visible = [ch for ch in prompt if not ch.isspace()]
    letters = sum(ch.isalpha() for ch in visible)
    if not visible or letters < len(visible) / 2:
        return f"the prompt {_short(prompt)!r} is mostly punctuation, not a description"
    if len(_words(prompt)) < MIN_PROMPT_WORDS and letters < MIN_PROMPT_LETTERS:  # CJK writes no spaces
        return f"the prompt {_short(prompt)!r} is too short to describe a picture"
    idea_words = _words(idea)
    if idea_words and all(w.isascii() for w in idea_words):
        foreign = sum(not ch.isascii() for ch in visible if ch.isalpha())
        if foreign > letters / 2:  # an English idea answered in another script (quoted text aside)
            return "the prompt is not in English, the idea's language"
    if not idea_words or not all(w.isascii() for w in idea_words) or FOREIGN_WORDS.intersection(idea_words):
        return ""
    content = [w for w in idea_words if w not in STOP_WORDS] or idea_words
    said = _words(prompt)
    if any(_same_word(w, t) for w in content for t in said):
        return ""
    return f"the prompt shares no word with the idea ({', '.join(content[:5])}): it must describe the idea"


def _short(text: str, limit: int = 40) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


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
            for d in dreams.expansions[:k]:
                problem = prompt_problem(idea, d.prompt)
                if problem:
                    return problem
                lost = missing_quotes(idea, d.prompt)
                if lost:
                    return f"the quoted text {lost[0]!r} must appear verbatim in every prompt"
            return ""

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
