"""The one small engine interface, and engines chosen by name."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from reverie.types import EngineOutput, ProgressFn, RenderSpec, ReverieError

OutputFn = Callable[[EngineOutput], None]

ENGINES = ("tiny", "diffusers", "comfyui", "fixed")


class Engine(Protocol):
    name: str
    version: str
    # What decides the pixels beyond the spec (weights, dtype, model files). A resumed run keeps
    # it, so one run never mixes images from two models.
    identity: str

    def render(self, specs: Sequence[RenderSpec], progress: ProgressFn | None = None,
               on_output: OutputFn | None = None) -> list[EngineOutput]:
        """Render a batch of specs; return one output per spec, in order.

        `on_output` is called on the calling thread with each output as soon as it is ready
        (in order of completion, once per spec), so the caller can store and score it while the
        engine renders the next; whatever was handed on survives an exception later in the call.
        """
        ...

    def close(self) -> None: ...


def make_engine(name: str, **options) -> Engine:
    """Build an engine by name. Imports are lazy so that `import reverie` stays light."""
    if name == "tiny":
        from reverie.render.tiny import TinyEngine

        return TinyEngine(**options)
    if name == "diffusers":
        from reverie.render.diffusers_engine import DiffusersEngine

        return DiffusersEngine(**options)
    if name == "comfyui":
        from reverie.render.comfyui import ComfyUIEngine

        return ComfyUIEngine(**options)
    if name == "fixed":
        from reverie.render.fixed import FixedLatencyEngine

        return FixedLatencyEngine(**options)
    raise ReverieError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
