"""Expanders turn an idea into prompts; the formula one works with no LLM at all."""

from __future__ import annotations

from typing import Protocol

from reverie.agents.critic import Critique, rule_critic
from reverie.agents.formula import expand_formula
from reverie.profiles import Profile
from reverie.types import Expansion, sha256_text


class Expander(Protocol):
    name: str

    def expand(self, idea: str, profile: Profile, k: int = 1, seed: int = 0) -> list[Expansion]:
        """k different interpretations of the idea, in the profile's prompt style."""
        ...


class Critic(Protocol):
    def critique(self, idea: str, expansion: Expansion, profile: Profile, round_best: float,
                 previous_best: float | None, similarity: float, details: list[dict], feedback: str = "",
                 can_edit: bool = False) -> Critique:
        """`can_edit`: the loop can repair the best image by an edit; a critic that sees a fixable
        flaw answers Critique("edit", reason, edit="<the fix as an instruction>")."""
        ...


class FormulaExpander:
    name = "formula"

    def expand(self, idea: str, profile: Profile, k: int = 1, seed: int = 0) -> list[Expansion]:
        return [expand_formula(idea, profile, seed=seed + i) for i in range(k)]


class RuleCritic:
    """The offline critic: decides from the scores; a revision is a fresh formula reading."""

    name = "rules"

    def __init__(self, expander: Expander | None = None, similarity_threshold: float = 0.9):
        self.expander = expander or FormulaExpander()
        self.similarity_threshold = similarity_threshold

    def critique(self, idea, expansion, profile, round_best, previous_best, similarity, details,
                 feedback: str = "", can_edit: bool = False) -> Critique:
        # A VLM judge's notes are free text the rules cannot read; the LLM critic uses them. Nor
        # can rules see a flaw to fix, so they never ask for an edit.
        c = rule_critic(expansion, round_best, previous_best, similarity, self.similarity_threshold)
        if c.action != "revise":
            return c
        # Seeded by the prompt being revised, so a resumed run revises the same way.
        seed = int(sha256_text(expansion.prompt)[:8], 16)
        revised = self.expander.expand(idea, profile, k=1, seed=seed)[0]
        return Critique("revise", c.reason,
                        Expansion(prompt=revised.prompt, negative=revised.negative, source="critic", reason=c.reason))
