"""The offline formula expander: the prompt anatomy filled from the idea with sensible choices.

No LLM. Deterministic for a given idea and seed. It is what runs when no LLM server answers, so
it must give a model like Z-Image Turbo the long, concrete, coherent prompt it wants.
"""

from __future__ import annotations

import hashlib
import random
import re

from reverie.profiles import Profile
from reverie.types import Expansion

MEDIUMS = [
    ("photo", "a high-resolution photograph shot on a full-frame camera with a 50mm lens"),
    ("photo", "a cinematic film still on 35mm film with fine natural grain"),
    ("painting", "a detailed oil painting with visible, confident brushwork"),
    ("painting", "a delicate watercolor illustration on textured paper"),
    ("digital", "a polished piece of digital concept art"),
]
COMPOSITIONS = [
    "composed on the rule of thirds with the subject slightly off-centre",
    "a centred, symmetrical composition at eye level",
    "a low-angle shot that makes the subject feel monumental",
    "a close, intimate framing with a shallow depth of field",
    "a wide establishing shot with generous negative space",
]
ENVIRONMENTS = [
    "the surroundings are rich with small, believable details",
    "the background recedes into soft atmospheric haze",
    "the setting feels lived-in, with textures of wood, stone and fabric",
    "the scene opens onto a vast landscape that stretches to the horizon",
]
# Each lighting choice with the times and weather it would contradict: an idea that says "rain"
# or "night" must not get "crisp morning sun".
CONDITIONS = {
    "night": {"night", "midnight", "moon", "moonlit", "moonlight", "starry", "stars", "nocturnal"},
    "dusk": {"dusk", "evening", "sunset", "twilight"},
    "dawn": {"dawn", "sunrise", "morning"},
    "day": {"day", "daytime", "daylight", "midday", "noon", "afternoon"},
    "wet": {"rain", "rainy", "raining", "storm", "stormy", "fog", "foggy", "mist", "misty", "snow", "snowy",
            "overcast", "drizzle", "downpour"},
}
LIGHTING = [
    ("soft golden-hour light rakes across the scene", {"night", "wet"}),
    ("diffuse overcast light wraps every surface evenly", {"night"}),
    ("dramatic rim light separates the subject from the background", set()),
    ("warm practical lights glow against the cool ambient dusk", {"dawn", "day"}),
    ("crisp morning light casts long, clean shadows", {"night", "dusk", "wet"}),
    ("cool moonlight and a few warm windows pick out the forms", {"dawn", "dusk", "day"}),
]
COLOURS = [
    "a muted palette of teal and amber",
    "rich, saturated complementary colours",
    "an earthy palette of ochre, olive and umber",
    "cool blues with a single warm accent",
    "soft pastel tones",
]
MOODS = ["quiet and contemplative", "serene and hopeful", "mysterious and atmospheric",
         "joyful and full of life", "melancholy yet beautiful"]
# A style reference must agree with the medium: "an oil painting in the manner of editorial
# photography" confuses a model that reads prompts semantically.
STYLES = {
    "photo": ["in the manner of classic editorial photography", "with the restraint of a fine-art print",
              "with the polish of a feature-film frame"],
    "painting": ["in the tradition of the Romantic landscape painters", "with the storytelling of a picture-book illustration",
                 "with the restraint of a fine-art print"],
    "digital": ["with the polish of a feature-film frame", "with the clarity of a video-game key art",
                "with the storytelling of a picture-book illustration"],
}
TAG_EXTRAS = ["detailed background", "dynamic lighting", "depth of field", "intricate details",
              "soft lighting", "vibrant colors", "cinematic composition", "sharp focus"]

NAME = "formula"


def _rng(idea: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{idea}\x00{seed}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _lighting_for(idea: str) -> list[str]:
    words = set(re.findall(r"[a-z]+", idea.lower()))
    present = {name for name, cues in CONDITIONS.items() if words & cues}
    fitting = [text for text, conflicts in LIGHTING if not (conflicts & present)]
    return fitting or [text for text, _ in LIGHTING]


def subject_of(idea: str) -> str:
    idea = re.sub(r"\s+", " ", idea).strip().rstrip(".")
    return idea[0].upper() + idea[1:] if idea else idea


def expand_formula(idea: str, profile: Profile, seed: int = 0) -> Expansion:
    rng = _rng(idea, seed)
    subject = subject_of(idea)
    if profile.prompt_style == "tags":
        tags = [profile.quality_tags, subject.lower()] + rng.sample(TAG_EXTRAS, 4)
        tags.append(rng.choice(["photorealistic", "illustration", "digital painting", "anime style"]))
        prompt = ", ".join(t for t in tags if t)
        return Expansion(prompt=prompt, negative=profile.default_negative, source=NAME)
    medium_kind, medium = rng.choice(MEDIUMS)
    prompt = (
        f"{subject}. {medium[0].upper() + medium[1:]}, {rng.choice(STYLES[medium_kind])}. "
        f"The main subject is rendered with care and clear, readable form; "
        f"{rng.choice(COMPOSITIONS)}. {rng.choice(ENVIRONMENTS).capitalize()}. "
        f"{rng.choice(_lighting_for(idea)).capitalize()}, with {rng.choice(COLOURS)}. "
        f"The mood is {rng.choice(MOODS)}. Every texture is crisp and believable, "
        f"with natural proportions and coherent perspective."
    )
    quoted = re.findall(r'"([^"]+)"', idea)
    if quoted and profile.traits.text_in_images:
        # The families that letter well are told plainly what to write, and how.
        words = ", ".join(f'"{q}"' for q in quoted)
        prompt += f" The words {words} are lettered clearly and legibly, in a typeface that suits the scene."
    return Expansion(prompt=prompt, negative=profile.default_negative if profile.negative else "", source=NAME)


def fit_lighting(prompt: str, idea: str) -> str:
    """A formula lighting line the idea contradicts ("golden hour" after "make it night") swapped for
    one that fits it; the choice is seeded by the idea, so the same follow-up rewords the same way."""
    fitting = _lighting_for(idea)
    for text, _ in LIGHTING:
        if text not in fitting and text.capitalize() in prompt:
            prompt = prompt.replace(text.capitalize(), _rng(idea, 0).choice(fitting).capitalize())
    return prompt
