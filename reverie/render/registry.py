"""Engines chosen by name: each name maps to a lazy "module:Class" factory.

Nothing here imports an engine module until it is asked for, so `import reverie` stays light
and the engines depend only on reverie.types (where the Engine protocol lives), never on this.
"""

from __future__ import annotations

import importlib

from reverie.types import Engine, ReverieError

_FACTORIES: dict[str, str] = {
    "tiny": "reverie.render.tiny:TinyEngine",
    "diffusers": "reverie.render.diffusers_engine:DiffusersEngine",
    "comfyui": "reverie.render.comfyui:ComfyUIEngine",
    "fixed": "reverie.render.fixed:FixedLatencyEngine",
}
ENGINES: tuple[str, ...] = tuple(_FACTORIES)


def make_engine(name: str, **options) -> Engine:
    """Build an engine by name."""
    try:
        target = _FACTORIES[name]
    except KeyError:
        raise ReverieError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(**options)
