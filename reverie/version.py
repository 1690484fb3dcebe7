"""The package version, in a module of its own so that the store can stamp it without importing
the package root (which reaches up to the orchestrator)."""

__version__ = "0.1.0"
