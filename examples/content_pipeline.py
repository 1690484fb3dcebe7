"""A content pipeline on reverie's Python API, end to end in seconds.

It uses the tiny engine (random weights: the pictures mean nothing, the pipeline is real) and a
throwaway home. Point `home` at a real folder and drop `engine="tiny"` to use real weights.

    python examples/content_pipeline.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reverie.orchestrator.studio import Studio

SMALL = {"n": 2, "rounds": 1, "megapixels": 0.02}  # tiny images, one round: seconds on a CPU


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, Studio(home=Path(tmp) / "home", engine="tiny", scorer="heuristic") as studio:
        # 1. One idea, the best images back as typed results.
        made = studio.make("a lighthouse at dusk", **SMALL)
        print(f"make: run {made.run_id}, best {made.best[0].scores.composite:.3f} at {made.best[0].path}")

        # 2. The same, watching progress while it runs.
        for event in studio.stream("a fox in the rain", **SMALL):
            if event.kind == "rendered":
                print(f"stream: rendered seed {event.data['seed']}")
            elif event.kind == "result":
                print(f"stream: done, {len(event.data['result'].renders)} renders")

        # 3. A file of ideas: best-of-N each, a contact sheet; run it again after a crash to continue.
        ideas = Path(tmp) / "ideas.txt"
        ideas.write_text("# this week's posts\na cat on a windowsill\n"
                         '{"idea": "a red car at night", "aspect": "16:9"}\n')
        batch = studio.batch(ideas, per_prompt=2, keep=1, megapixels=0.02)
        for item in batch.items:
            print(f"batch: {item.idea!r} kept {[r.path for r in item.kept]}")
        print(f"batch: contact sheet {batch.report_path}")

        # 4. A conversation: each follow-up starts from the last result.
        for message in ["a woman in a garden", "make it night", "more like the second one"]:
            turn = studio.chat("demo", message, **SMALL)
            print(f"chat turn {turn.turn}: {turn.interpretation.summary} -> {turn.best[0].path}")


if __name__ == "__main__":
    main()
