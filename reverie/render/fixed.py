"""The `fixed` engine: a fixed time per image and a picture drawn from the seed.

Benchmarks use it to measure what the orchestrator costs around an engine whose cost is known
exactly; the picture is seeded noise, so the same spec always gives the same pixels.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from reverie.types import EngineImage, EngineOutput, OutputFn, ProgressFn, RenderSpec, ReverieError, no_progress


class FixedLatencyEngine:
    name = "fixed"
    version = "fixed 1"
    identity = "fixed-v1"

    def __init__(self, latency: float = 0.05, **_ignored: Any):
        if float(latency) < 0:
            raise ReverieError(f"latency must be 0 or more seconds (got {latency})")
        self.latency = float(latency)
        self.encoder_calls = 0
        self.forward_seconds = 0.0

    @staticmethod
    def image_for(spec: RenderSpec):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng([int(spec.seed) & 0xFFFFFFFF, spec.width, spec.height])
        # Coarse blocks scaled up: a picture with structure, not per-pixel static.
        small = rng.integers(0, 256, size=(max(1, spec.height // 8), max(1, spec.width // 8), 3), dtype=np.uint8)
        return Image.fromarray(small).resize((spec.width, spec.height), Image.Resampling.BILINEAR)

    def render(self, specs: Sequence[RenderSpec], progress: ProgressFn | None = None,
               on_output: OutputFn | None = None) -> list[EngineOutput]:
        progress = progress or no_progress
        outputs = []
        for spec in specs:
            t0 = time.perf_counter()
            image = self.image_for(spec)
            remaining = self.latency - (time.perf_counter() - t0)
            if remaining > 0:
                time.sleep(remaining)
            seconds = time.perf_counter() - t0
            self.forward_seconds += seconds
            output = EngineOutput(spec=spec, image=image, engine=self.name, engine_version=self.version, seconds=seconds)
            outputs.append(output)
            if on_output is not None:
                on_output(output)
            progress(EngineImage(seed=spec.seed, seconds=seconds))
        return outputs

    def close(self) -> None:
        pass
