"""How busy does a batch keep the engine? (goal: >= 95% with a fixed-latency engine)

The engine is reverie's `fixed` engine (a known time per image). The expander and the scorer
are the real offline ones with an artificial delay added, standing in for an LLM call and a
CLIP forward pass. The batch pipeline should hide both behind rendering; for contrast the
bench also times the same work done one step after another (expand, render, score).

    python bench/bench_batch.py [--ideas 6] [--per-prompt 8] [--latency 0.05]
                                [--expand-latency 0.2] [--score-latency 0.02]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reverie.agents.expander import FormulaExpander, RuleCritic
from reverie.orchestrator.studio import Studio
from reverie.render.fixed import FixedLatencyEngine
from reverie.profiles import get_profile
from reverie.scoring.heuristic import HeuristicScorer
from reverie.types import RenderSpec

IDEAS = ["a fox in the rain", "a lighthouse at dusk", "a knight in a forest", "a red car at night",
         "a cat on a windowsill", "a city street in the snow", "a boat on a calm lake", "a dragon over mountains"]


class SlowExpander(FormulaExpander):
    """The formula expander plus a fixed delay: an LLM round trip."""

    def __init__(self, delay: float):
        self.delay = delay

    def expand(self, idea, profile, k=1, seed=0):
        time.sleep(self.delay)
        return super().expand(idea, profile, k=k, seed=seed)


class SlowCritic(RuleCritic):
    """The rule critic plus the same delay: the LLM critic's round trip after every round."""

    def __init__(self, delay: float):
        super().__init__(FormulaExpander())
        self.delay = delay

    def critique(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().critique(*args, **kwargs)


class SlowScorer(HeuristicScorer):
    """The heuristic scorer plus a fixed delay per image: a CLIP forward pass."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def score(self, images, ideas, prompts):
        time.sleep(self.delay * len(images))
        return super().score(images, ideas, prompts)


def sequential_fraction(ideas, per_prompt, engine, expander, scorer, round_size=4) -> float:
    """The same work one step after another: the engine waits for every expansion and score."""
    profile = get_profile("z-image-turbo")
    busy, t0 = 0.0, time.perf_counter()
    for idea in ideas:
        for first in range(0, per_prompt, round_size):
            prompt = expander.expand(idea, profile, seed=first)[0].prompt
            specs = [RenderSpec(prompt=prompt, seed=s, width=128, height=128, steps=9, guidance=0.0, profile=profile.name)
                     for s in range(first, min(per_prompt, first + round_size))]
            r0 = time.perf_counter()
            outputs = engine.render(specs)
            busy += time.perf_counter() - r0
            scorer.score([o.image for o in outputs], [idea] * len(outputs), [prompt] * len(outputs))
    return busy / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ideas", type=int, default=6)
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.05, help="engine seconds per image")
    ap.add_argument("--expand-latency", type=float, default=0.2, help="expander seconds per call")
    ap.add_argument("--score-latency", type=float, default=0.02, help="scorer seconds per image")
    args = ap.parse_args()

    ideas = (IDEAS * (args.ideas // len(IDEAS) + 1))[: args.ideas]
    engine = FixedLatencyEngine(latency=args.latency)
    expander, scorer = SlowExpander(args.expand_latency), SlowScorer(args.score_latency)
    critic = SlowCritic(args.expand_latency)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "ideas.txt"
        file.write_text("\n".join(ideas) + "\n")
        with Studio(home=Path(tmp) / "home", engine=engine, expander=expander, critic=critic,
                    scorer=SlowScorer(args.score_latency)) as studio:
            t0 = time.perf_counter()
            result = studio.batch(file, per_prompt=args.per_prompt, keep=2, megapixels=0.02)
            wall = time.perf_counter() - t0
    renders = result.renders_this_session
    print(f"batch: {len(ideas)} ideas x {args.per_prompt} renders = {renders} renders in {wall:.2f}s "
          f"(engine {args.latency * 1000:.0f} ms/image, expander {args.expand_latency * 1000:.0f} ms/call, "
          f"scorer {args.score_latency * 1000:.0f} ms/image)")
    seq = sequential_fraction(ideas, args.per_prompt, engine, expander, scorer)
    print(f"sequential expand->render->score, same work: engine busy fraction {seq:.3f}")
    print(f"engine span {result.engine_wall_seconds:.2f}s of the {wall:.2f}s batch (the rest: start-up, the first "
          f"expansion, the last scores, curation and the report)")
    print(f"engine busy fraction: {result.engine_busy_fraction:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
