"""What each score component means, in one line: what it measures, its scale, which way is better,
and where a value sits against the reference quantiles. `reverie show --explain` and the web image
page print these, so the words live here, beside the components, once. A scorer plugin's component
is explained in its plugin's own words (ScorerPlugin.description) against its own quantiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from reverie.scoring.plugins import ScorerPlugin


@dataclass(frozen=True)
class Meaning:
    measures: str
    scale: str
    higher_is_better: bool = True


MEANINGS: dict[str, Meaning] = {
    "composite": Meaning("all selecting components in one: their percentiles, weighted, pulled down by the weakest",
                         "0..1"),
    # The CLIP family (composite.REFERENCES holds their quantiles).
    "faithfulness": Meaning("how well the image matches your idea (CLIP image-text cosine)", "cosine, typically 0.18-0.33"),
    "prompt_match": Meaning("how well the image matches the expanded prompt (CLIP image-text cosine)",
                            "cosine, typically 0.18-0.33"),
    "aesthetic": Meaning("how good-looking the LAION aesthetic predictor finds it", "1-10, typically 4.6-6.9"),
    "pickscore": Meaning("how likely people are to pick it for the prompt (PickScore v1)", "typically 18.8-23.2"),
    "hps": Meaning("human preference for it given the prompt (HPS v2.1)", "typically 0.21-0.31"),
    # The heuristic scorer: each a quality in 0..1.
    "sharpness": Meaning("how crisp its edges are (blur lowers it)", "0..1"),
    "noise": Meaning("freedom from grain and static: 1 is clean, 0 is static", "0..1"),
    "exposure": Meaning("brightness in the middle range, without clipped blacks or whites", "0..1"),
    "contrast": Meaning("the spread between its darkest and brightest tones", "0..1"),
    "colourfulness": Meaning("how colourful it is (Hasler-Süsstrunk)", "0..1"),
    # Edits (scoring.edit_scores).
    "base": Meaning("the usual composite of the edited image", "0..1"),
    "preservation_pixels": Meaning("how much of the source's pixels outside the change it kept", "0..1"),
    "preservation_structure": Meaning("how much of the source's edges and layout it kept", "0..1"),
    "preservation_clip": Meaning("how close it stays to the source for CLIP", "cosine, 1 is the same image"),
    "edit_direction": Meaning("whether it changed in the direction the instruction asked (CLIP)",
                              "0..1, 0.5 is no change"),
}
# The heuristic scorer's composite is no percentile: a weighted geometric mean of its qualities.
HEURISTIC_COMPOSITE = Meaning("the heuristic's qualities in one (a weighted geometric mean: one defect sinks it); "
                              "says nothing of the prompt", "0..1")


def explain(name: str, value: float, description: str = "", scorer: str = "",
            quantiles: Optional[Sequence[float]] = None) -> str:
    """One line: "noise 0.090 — freedom from grain and static ...; 0..1, higher is better; no reference".

    `description` and `quantiles` are a plugin component's own (its ScorerPlugin's)."""
    from reverie.scoring.composite import HELD_OUT_PREFIX, REFERENCES, percentile

    base = name[len(HELD_OUT_PREFIX):] if name.startswith(HELD_OUT_PREFIX) else name
    reference = REFERENCES.get(base) or quantiles
    meaning: Optional[Meaning] = HEURISTIC_COMPOSITE if (base, scorer) == ("composite", "heuristic") else MEANINGS.get(base)
    if meaning is None:
        meaning = Meaning(description or "a scorer plugin's component", "its own scale"
                          if reference else "0..1 (taken as a quality)")
    direction = "higher is better" if meaning.higher_is_better else "lower is better"
    if reference:
        share = round(100 * percentile(value, reference))
        where = f"better than {share}% of reference images"
    elif base == "composite" and scorer != "heuristic":
        where = "0.5 is a typical generated image, " + ("above" if value >= 0.5 else "below") + " it"
    else:  # the heuristic's qualities and unreferenced plugins: there is nothing to compare against
        where = ""
    held = "; a held-out judge: shown, never used to select" if name.startswith(HELD_OUT_PREFIX) else ""
    return f"{name} {value:.3f} — {meaning.measures}; {meaning.scale}, {direction}" + (f"; {where}" if where else "") + held


def explain_scores(scores: Mapping[str, object], plugins: Optional[Sequence["ScorerPlugin"]] = None) -> dict[str, str]:
    """The line of each numeric component of a stored score (the scorer's name is not one).

    A plugin's component is told in its plugin's words: `plugins`, or else the installed ones."""
    from reverie.scoring.composite import HELD_OUT_PREFIX

    by_name = {p.name: p for p in (installed_plugins() if plugins is None else plugins)}
    scorer = str(scores.get("scorer") or "")
    lines = {}
    for name, value in scores.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        plugin = by_name.get(name[len(HELD_OUT_PREFIX):] if name.startswith(HELD_OUT_PREFIX) else name)
        lines[name] = explain(name, float(value), plugin.description if plugin else "", scorer=scorer,
                              quantiles=plugin.quantiles if plugin else None)
    return lines


def installed_plugins() -> list["ScorerPlugin"]:
    """The third-party entries of the scorer registry. A broken one is left out rather than take
    `show --explain` or the image page down: scoring names it when it loads plugins."""
    from reverie.scoring.plugins import installed, plugin
    from reverie.types import ReverieError

    found = []
    for entry in installed():
        if entry.built_in:
            continue
        try:
            found.append(plugin(entry))
        except ReverieError:
            continue
    return found
