"""Scorers as plugins: any installed package can add a score component, as `llm` takes models.

A package declares an entry point in the group `reverie.scorers` whose object is a `ScorerPlugin`:

    [project.entry-points."reverie.scorers"]
    sharp_edges = "my_package:PLUGIN"

The plugin names its component, says how its raw values are spread on typical generated images
(seven quantiles at `composite.PERCENTS`, so the composite can turn a raw value into a percentile
as it does for CLIP or PickScore), and whether it may select (a share of the composite) or only
judge (stored and shown as `held_out:NAME`, never used to choose). Importing the entry point must
be cheap: weights load in `load(settings)`, which returns the scoring function.

Configuration lives in reverie.toml: `[scoring.weights] NAME = 0.2` sets a selecting plugin's share,
`[scoring.plugins] off = ["NAME"]` leaves one out, and `[scoring.plugins.NAME]` is handed to its `load`.
reverie's own components (CLIP faithfulness and prompt match, aesthetic, PickScore, HPS, the
heuristic ones) are entries of the same registry (scoring/builtins.py), each with its `family`: the
built-in scorer that computes it in one shared pass. `registry()` is the one place to find scorers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from reverie.scoring.composite import HELD_OUT_PREFIX, PERCENTS, REFERENCES, composite
from reverie.types import ReverieError, Scores

GROUP = "reverie.scorers"
ROLES = ("select", "judge")
BUILT_IN = "reverie"  # entry points of reverie's own distribution are not third-party plugins
log = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]  # (images, prompts) -> raw values


@dataclass(frozen=True)
class ScorerPlugin:
    name: str  # the component stored for every render: letters, digits and underscores
    load: Callable[[Mapping[str, Any]], ScoreFn]  # settings ([scorers.NAME] of reverie.toml) -> score function
    quantiles: Optional[tuple[float, ...]] = None  # raw value at each of PERCENTS; None: already a 0..1 quality
    role: str = "select"
    weight: float = 0.1  # its default share of the composite when it selects
    description: str = ""  # what it measures, in one line: `show --explain` and the image page say it
    close: Callable[[], None] = field(default=lambda: None)
    # "": a third-party plugin, scored on its own; "clip" or "heuristic": a built-in component that
    # scorer of reverie computes in its shared pass (scoring/builtins.py).
    family: str = ""

    def check(self) -> "ScorerPlugin":
        if not self.name.replace("_", "").isalnum() or self.name.startswith(HELD_OUT_PREFIX):
            raise ReverieError(f"scorer plugin name {self.name!r}: use letters, digits and underscores")
        if self.role not in ROLES:
            raise ReverieError(f"scorer plugin {self.name}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.quantiles is not None and (len(self.quantiles) != len(PERCENTS) or list(self.quantiles) != sorted(self.quantiles)):
            raise ReverieError(f"scorer plugin {self.name}: quantiles are {len(PERCENTS)} rising raw values, "
                               f"one at each of {PERCENTS}")
        if self.weight < 0:
            raise ReverieError(f"scorer plugin {self.name}: weight {self.weight} is negative")
        return self


@dataclass(frozen=True)
class Installed:
    """An entry point of the group, as `reverie models` lists it (nothing imported yet)."""
    name: str
    value: str  # module:object
    distribution: str
    entry_point: Any = field(default=None, compare=False, repr=False)

    @property
    def built_in(self) -> bool:
        return self.distribution == BUILT_IN


def installed() -> list[Installed]:
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
        found.setdefault(ep.name, Installed(ep.name, ep.value, dist, ep))
    return sorted(found.values(), key=lambda i: (not i.built_in, i.name))


def plugin(entry: Installed) -> ScorerPlugin:
    """Import one entry point's ScorerPlugin; a broken plugin is one line naming its package."""
    try:
        obj = entry.entry_point.load()
    except Exception as e:  # a third party's import error must not take reverie down with a traceback
        log.exception("scorer plugin %s failed to import", entry.name)
        raise ReverieError(f"scorer plugin {entry.name} (from {entry.distribution}) failed to import: {e}; "
                           f"fix or `pip uninstall {entry.distribution}`") from None
    if not isinstance(obj, ScorerPlugin):
        raise ReverieError(f"scorer plugin {entry.name} (from {entry.distribution}) is not a reverie ScorerPlugin: "
                           f"its entry point must name one")
    if obj.name != entry.name:
        raise ReverieError(f"scorer plugin entry point {entry.name} names a plugin called {obj.name}: make them equal")
    return obj.check()


def third_party() -> list[ScorerPlugin]:
    """Every installed plugin that is not one of reverie's own (those the CLIP scorer loads itself)."""
    return [plugin(e) for e in installed() if not e.built_in]


def built_ins() -> list[ScorerPlugin]:
    from reverie.scoring.builtins import built_in_entries

    return [ScorerPlugin(**fields).check() for fields in built_in_entries()]


def registry(*, third_party_too: bool = True) -> list[ScorerPlugin]:
    """Every scorer reverie knows: its own components, then the installed plugins (a broken plugin
    is one line). A plugin may not take a built-in component's name."""
    entries = built_ins()
    if third_party_too:
        own = {e.name for e in entries}
        for p in third_party():
            if p.name in own:
                raise ReverieError(f"scorer plugin {p.name} reuses the name of a built-in component: rename it")
            entries.append(p)
    return entries


def find(name: str) -> ScorerPlugin:
    """One registry entry by its component name."""
    for entry in registry():
        if entry.name == name:
            return entry
    raise ReverieError(f"no scorer component named {name!r}: use one of {', '.join(e.name for e in registry())}")


def register_reference(p: ScorerPlugin) -> None:
    """Let the composite normalise the plugin's component like a built-in one."""
    if p.family == "" and p.name in {b.name for b in built_ins()}:
        raise ReverieError(f"scorer plugin {p.name} reuses the name of a built-in component: rename it")
    if p.name in REFERENCES and p.quantiles is not None and tuple(REFERENCES[p.name]) != tuple(p.quantiles):
        raise ReverieError(f"scorer plugin {p.name} reuses the name of a built-in component: rename it")
    if p.quantiles is not None:
        REFERENCES.setdefault(p.name, tuple(float(q) for q in p.quantiles))


class WithPlugins:
    """A scorer plus plugin components: each selecting plugin's value joins the composite with its
    share; a judging plugin's value is stored as held_out:NAME and never chooses."""

    def __init__(self, base, plugins: Sequence[ScorerPlugin], settings: Mapping[str, Mapping[str, Any]],
                 weights: Mapping[str, float]):
        self.base = base
        self.plugins = list(plugins)
        for p in self.plugins:
            register_reference(p)
        self.functions = {p.name: p.load(dict(settings.get(p.name, {}))) for p in self.plugins}
        self.weights = {p.name: float(weights.get(p.name, p.weight)) for p in self.plugins if p.role == "select"}
        self.name = base.name + "".join(f"+{p.name}" for p in self.plugins)
        self.honest_note = base.honest_note
        self.dedupe_threshold = base.dedupe_threshold
        self.held_out = base.held_out

    def __getattr__(self, item):  # weighting, clip, ... of the scorer underneath
        return getattr(self.base, item)

    def score(self, images: Sequence, ideas: Sequence[str], prompts: Sequence[str]) -> list[Scores]:
        out = self.base.score(images, ideas, prompts)
        extra = {p.name: [float(v) for v in self.functions[p.name](list(images), list(prompts))] for p in self.plugins}
        for name, values in extra.items():
            if len(values) != len(out):
                raise ReverieError(f"scorer plugin {name} returned {len(values)} values for {len(out)} images")
        combined = []
        for i, s in enumerate(out):
            values = dict(s.values)
            for p in self.plugins:
                values[(HELD_OUT_PREFIX + p.name) if p.role == "judge" else p.name] = round(extra[p.name][i], 5)
            combined.append(Scores(values=values, composite=round(self.combine(values, s), 5),
                                   scorer=self.name, details={**s.details, "plugins": [p.name for p in self.plugins]},
                                   embedding=s.embedding))
        return combined

    def combine(self, values: Mapping[str, float], base: Scores) -> float:
        if not self.weights:
            return base.composite
        own = {k: v for k, v in values.items() if k not in self.weights}
        if base.scorer.startswith("heuristic"):
            from reverie.scoring.heuristic import combine

            # The heuristic family is a geometric mean of 0..1 qualities: a plugin joins as its percentile.
            from reverie.scoring.composite import normalise

            mixed = {**own, **{k: normalise(k, values[k]) for k in self.weights}}
            return combine(mixed, {**self.base.weights, **self.weights})
        return composite(values, {**self.base.weights, **self.weights})[0]

    def close(self) -> None:
        for p in self.plugins:
            p.close()
        self.base.close()


def with_plugins(base, table: Mapping[str, Any], weights: Mapping[str, float]):
    """`base` with every installed third-party plugin that `[scorers] off` does not switch off."""
    entries = [e for e in installed() if not e.built_in]
    off = set(table.get("off", []) or [])
    chosen = [plugin(e) for e in entries if e.name not in off]
    if not chosen:
        return base
    settings = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    return WithPlugins(base, chosen, settings, weights)


def default_weights(family: str) -> dict[str, float]:
    """The default shares of a built-in scorer family's components and of every selecting plugin,
    read from the registry: what `taste` starts from and weighs."""
    own = {p.name: p.weight for p in built_ins() if p.family == family and p.role == "select"}
    return {**own, **plugin_default_weights()}


def plugin_default_weights() -> dict[str, float]:
    """Selecting plugins' default shares, for `taste` (which weighs every component it can)."""
    out = {}
    for e in installed():
        if e.built_in:
            continue
        try:
            p = plugin(e)
        except ReverieError:
            continue
        register_reference(p)
        if p.role == "select":
            out[p.name] = p.weight
    return out
