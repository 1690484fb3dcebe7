"""reverie: a terse idea in, a small set of excellent images out, each one explained."""

from reverie.version import __version__


def __getattr__(name: str):
    # Lazy, so that `import reverie` stays light and never touches torch or the network.
    if name == "Studio":
        from reverie.orchestrator.studio import Studio

        return Studio
    if name == "MakeResult":
        from reverie.orchestrator.studio import MakeResult

        return MakeResult
    raise AttributeError(name)


__all__ = ["Studio", "MakeResult", "__version__"]
