"""The one check every prompt writer's answer passes (the LLM dreamer and critic, the in-process
model, ComfyUI's TextGenerate): it describes the idea, in the idea's language, with its quoted
text verbatim. A model with random or broken weights writes fluent-looking gibberish; this is
what keeps it from being rendered as if it were a prompt."""

from __future__ import annotations

import os
import re

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|«([^»]+)»|「([^」]+)」|『([^』]+)』')


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
    """Why a written prompt cannot be what the idea asked for ("" when it may be): mostly
    punctuation (a reply of `}]}{`), too short, in another script than an English idea's, for an
    English idea not one of the idea's words, or quoted text of the idea not carried verbatim."""
    problem = _description_problem(idea, prompt)
    if problem:
        return problem
    lost = missing_quotes(idea, prompt)
    return f"the quoted text {lost[0]!r} is not in the answer: it must appear verbatim in every prompt" if lost else ""


def _description_problem(idea: str, prompt: str) -> str:
    visible = [ch for ch in prompt if not ch.isspace()]
    if not visible:
        return "the answer is empty"
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
