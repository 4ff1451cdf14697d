"""CLI commands registered on the `leadflow` app (filled in by the streams work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
