"""A chat change said in a prompt's own words, by rules (no LLM).

"make it night" is not appended to the last prompt: the time of day, the weather, the season and
the palette the prompt already names are swapped for the asked ones, and a change the prompt has
no words for is added as a short descriptive clause to its first sentence. Everything else (the
medium, the style, the composition) stays as it was, so a follow-up keeps the look.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reverie.agents.formula import fit_lighting, subject_of


@dataclass(frozen=True)
class Condition:
    """One value of an aspect of the scene: the words that say it, and how a prompt says it."""

    aspect: str  # time, weather or season: one value of each at a time
    name: str
    cues: tuple[str, ...]  # words (or two-word phrases) that name it in a message or a prompt
    phrase: str  # a clause: "at night"
    adjective: str  # before a noun: "moonlit light"


CONDITIONS = (
    Condition("time", "night", ("night", "nighttime", "midnight", "moonlit", "moonlight", "starry night"), "at night", "moonlit"),
    Condition("time", "dusk", ("dusk", "sunset", "twilight", "evening"), "at dusk", "twilight"),
    Condition("time", "dawn", ("dawn", "sunrise", "morning", "daybreak"), "at dawn", "early-morning"),
    Condition("time", "golden hour", ("golden hour", "golden-hour"), "at golden hour", "golden-hour"),
    Condition("time", "day", ("day", "daytime", "daylight", "midday", "noon", "afternoon"), "in broad daylight", "midday"),
    Condition("weather", "rain", ("rain", "rainy", "raining", "drizzle", "downpour"), "in the rain", "rain-soaked"),
    Condition("weather", "snow", ("snow", "snowy", "snowing", "snowfall", "blizzard"), "in falling snow", "snowy"),
    Condition("weather", "fog", ("fog", "foggy", "mist", "misty"), "in thick fog", "foggy"),
    Condition("weather", "storm", ("storm", "stormy", "thunderstorm"), "under a stormy sky", "stormy"),
    Condition("weather", "clear", ("sunny", "clear sky", "cloudless"), "under a clear, sunny sky", "sunlit"),
    Condition("weather", "overcast", ("overcast", "cloudy"), "under an overcast sky", "overcast"),
    Condition("season", "winter", ("winter", "wintry", "wintertime"), "in winter", "wintry"),
    Condition("season", "summer", ("summer", "summery", "summertime"), "in summer", "summery"),
    Condition("season", "autumn", ("autumn", "fall", "autumnal"), "in autumn", "autumnal"),
    Condition("season", "spring", ("spring", "springtime"), "in spring", "spring"),
)

# A palette change is a message made only of these words ("blue", "warmer colours", "black and white");
# "with a red umbrella" is a thing to add, not a palette.
COLOUR_WORDS = {"red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "teal", "turquoise", "gold",
                "golden", "silver", "brown", "grey", "gray", "crimson", "amber", "cyan", "magenta", "black", "white",
                "monochrome", "monochromatic", "sepia", "pastel", "neon", "warm", "warmer", "cool", "cooler", "muted",
                "vibrant", "colourful", "colorful", "saturated", "desaturated"}
PALETTE_FILLER = {"and", "more", "colours", "colors", "colour", "color", "tones", "palette", "a", "in", "of", "shades",
                  "with", "the", "scheme", "very", "all", "dominated", "by"}
PALETTES = {"black": "a stark black-and-white palette", "white": "a stark black-and-white palette",
            "monochrome": "a monochrome palette", "monochromatic": "a monochrome palette", "sepia": "a sepia-toned palette",
            "pastel": "soft pastel tones", "warm": "a warm palette of reds, oranges and gold",
            "warmer": "a warm palette of reds, oranges and gold", "cool": "a cool palette of blues and greens",
            "cooler": "a cool palette of blues and greens", "muted": "a muted, desaturated palette",
            "desaturated": "a muted, desaturated palette", "vibrant": "rich, saturated colours",
            "colourful": "rich, saturated colours", "colorful": "rich, saturated colours",
            "saturated": "rich, saturated colours", "neon": "glowing neon colours"}
# How prompts name a palette (the formula's own five, then free wording), to swap for the asked one.
PALETTE_PHRASES = re.compile(
    r"\b(?:a muted palette of teal and amber|rich, saturated complementary colours|an earthy palette of ochre, olive and umber"
    r"|cool blues with a single warm accent|soft pastel tones"
    r"|(?:an?\s+)?(?:(?!(?:with|and|the|in|of|a|an)\b)[\w-]+(?:,\s*|\s+and\s+|\s+)){0,3}palette"
    r"(?:\s+(?:of|dominated by)\s+[\w-]+(?:(?:,\s*|\s+and\s+)[\w-]+)*)?"
    r"|(?:[\w-]+\s+)?(?:colou?rs|tones|hues)(?=[.,;]|$))", re.I)
# What a message says before the change itself: "make it night", "can you turn it into winter".
IMPERATIVE = re.compile(r"^(?:(?:please|can you|could you|now|and|ok|okay)[\s,]+)*(?:make|turn|change|set|switch)\s+"
                        r"(?:it|this|that|them|the (?:scene|image|picture|picture's|whole thing|sky|light|lighting|colou?rs|palette))"
                        r"\s+(?:into|to|so it is|so it's)?\s*", re.I)
PREPOSITION = r"(?:at|during|in|under)\s+(?:the\s+|a\s+|an\s+)?(?:early\s+|late\s+|deep\s+)?"
# The nouns a time or weather word qualifies in a prompt: "sunset glow" -> "moonlit glow".
LIT_NOUNS = r"(?:light|lights|lighting|glow|sky|skies|sun|sunlight|air|haze|shadows|atmosphere|scene|landscape|mood|colou?rs|tones|palette)"
SENTENCE_END = re.compile(r"(?<=[^.\s])\.(?:\s|$)")


def change_words(message: str) -> str:
    """The change itself, without the request around it: "make it night." -> "night"."""
    text = " ".join(message.split()).strip(" .!?")
    return IMPERATIVE.sub("", text).strip(" .!?,")


def conditions_in(text: str) -> list[Condition]:
    """The time, weather and season a text names, one per aspect (the first named wins)."""
    low = text.lower()
    found: dict[str, Condition] = {}
    for cond in CONDITIONS:
        if cond.aspect not in found and any(re.search(rf"\b{re.escape(cue)}\b", low) for cue in cond.cues):
            # "day" inside "a sunny day at dusk" names the day, not the time: a more specific cue wins.
            found[cond.aspect] = cond
    if "time" in found and found["time"].name == "day":
        specific = [c for c in CONDITIONS if c.aspect == "time" and c.name != "day"
                    and any(re.search(rf"\b{re.escape(cue)}\b", low) for cue in c.cues)]
        if specific:
            found["time"] = specific[0]
    return list(found.values())


def palette_in(change: str) -> str | None:
    """The palette a change asks for, worded for a prompt; None when the change is not about colour."""
    words = re.findall(r"[a-z]+", change.lower())
    colours = [w for w in words if w in COLOUR_WORDS]
    if not colours or any(w not in COLOUR_WORDS and w not in PALETTE_FILLER for w in words):
        return None
    if colours[0] in PALETTES:
        return PALETTES[colours[0]]
    named = [w for w in colours if w not in PALETTES]
    return "a palette dominated by " + (" and ".join(named[:2]))


def descriptive_clause(change: str) -> str:
    """A change the prompt has no words for, as a clause: "more contrast" -> "with more contrast"."""
    words = change_words(change)
    low = words.lower()
    if re.match(r"(?:add|put|include)\s+", low):
        return "with " + re.sub(r"^(?:add|put|include)\s+", "", words, flags=re.I)
    if re.match(r"(?:remove|drop|delete|lose|no)\s+", low):
        return "without " + re.sub(r"^(?:remove|drop|delete|lose|no)\s+(?:the\s+)?", "", words, flags=re.I)
    if re.match(r"(?:more|less|fewer|stronger|softer|brighter|darker|bigger|smaller)\s+\w", low):
        return "with " + words
    return words


def _swap_condition(text: str, wanted: Condition) -> tuple[str, bool]:
    """Each phrase naming another value of wanted's aspect swapped for wanted's: "at dusk" -> "at night",
    "golden-hour light" -> "moonlit light". Returns the text and whether a clause now says it. A bare
    word is left alone ("the leaves fall", "a spring in the woods" are not seasons)."""
    for other in CONDITIONS:
        if other.aspect != wanted.aspect or other is wanted:
            continue
        for cue in sorted(other.cues, key=len, reverse=True):
            text = re.sub(rf"\b{PREPOSITION}{re.escape(cue)}\b(?:\s+(?:sky|skies|day|night|weather))?", wanted.phrase, text, flags=re.I)
            text = re.sub(rf"\b{re.escape(cue)}(?=[\s-]+{LIT_NOUNS}\b)", wanted.adjective, text, flags=re.I)
    return text, re.search(rf"\b{re.escape(wanted.phrase)}\b", text, re.I) is not None


def _add_to_first_sentence(prompt: str, clause: str) -> str:
    """The clause at the end of the prompt's first sentence, where the formula states the subject."""
    m = SENTENCE_END.search(prompt)
    if m is None:
        return f"{prompt.rstrip(' .,')}, {clause}"
    return f"{prompt[:m.start()].rstrip(' ,')}, {clause}{prompt[m.start():]}"


def reword(prompt: str, change: str, add: bool = True) -> str:
    """`prompt` saying `change` (a chat message such as "make it night"), in the prompt's own words:
    conflicting time, weather, season and palette phrases are swapped for the asked ones; what the
    prompt has no words for goes into its first sentence as a clause (with `add`). Pure."""
    words = change_words(change)
    if not words:
        return prompt
    text, clauses = prompt, []
    wanted = conditions_in(words)
    if wanted:
        text = fit_lighting(text, " ".join(c.phrase for c in wanted))
    for cond in wanted:
        text, said = _swap_condition(text, cond)
        if not said:
            clauses.append(cond.phrase)
    palette = palette_in(words)
    if palette:
        swapped = PALETTE_PHRASES.sub(palette, text, count=1)
        if swapped == text:
            clauses.append(f"with {palette}")
        text = swapped
    if not wanted and not palette:
        clauses.append(descriptive_clause(words))
    if add:
        for clause in clauses:
            text = _add_to_first_sentence(text, clause)
    return text


def revise_prompt(prompt: str, old_idea: str, new_idea: str) -> str | None:
    """A chat follow-up by rules: the last turn's prompt reworded to say the new idea, so the medium,
    style, composition and palette stay unless the follow-up changes them. An idea that only gained
    words ("X" -> "X, at night") has those words said in the prompt's own terms (agents.reword); a
    changed subject is swapped in place, and the time, weather, season and lighting it names replace
    those the prompt had. None when the prompt does not hold the old idea where it can be swapped (an
    LLM's own wording of another idea): the caller expands afresh."""
    old_subject, new_subject = subject_of(old_idea), subject_of(new_idea)
    if not old_subject or not new_subject:
        return None
    base = old_idea.strip().rstrip(".")
    if new_idea.strip().lower().startswith(base.lower()) and base:
        addition = new_idea.strip()[len(base):].strip(" ,.")
        return reword(prompt, addition) if addition else prompt
    if prompt.startswith(old_subject):
        head, rest = new_subject, prompt[len(old_subject):]
    elif old_subject.lower() in prompt.lower():
        at = prompt.lower().index(old_subject.lower())
        head, rest = prompt[:at] + new_idea.strip().rstrip("."), prompt[at + len(old_subject):]
    else:
        return None
    # Only what the new idea says that the old did not: "a knight" keeps the prompt's golden hour.
    old_words = set(re.findall(r"[a-z-]+", old_idea.lower()))
    gained = " ".join(w for w in re.findall(r"[a-z-]+", new_idea.lower()) if w not in old_words)
    return head + reword(rest, gained, add=False) if gained else head + rest
