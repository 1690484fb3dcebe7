"""CLI commands for batch (registered on the main app by reverie.orchestrator.cli)."""

from __future__ import annotations

from reverie.orchestrator.cli import app, err, friendly, out  # noqa: F401
