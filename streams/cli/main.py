"""The `leadflow` command line: the typer app, every command group registered on it, and the
entry point.

Offline commands (replay, funnel, simulate, verify, schema: `streams.cli.offline`; policy:
`streams.cli.policy`; calibrate and cohorts: `streams.cli.analytics`) read files or the
history topic and only call the pure core; runtime commands (worker, dev, send, tail,
export-history, topics, import, token) are registered from the other modules here.
"""

from __future__ import annotations

import typer

from streams.cli import (
    analytics,
    dev,
    imports,
    keys,
    offline,
    partials,
    policy,
    send,
    token,
    tools,
    worker,
)

app = typer.Typer(
    name="leadflow",
    no_args_is_help=True,
    add_completion=False,
    help="Event-sourced lead lifecycle: one agreed lead definition, applied to every event.",
)

for group in (offline, policy, worker, send, tools, dev, imports, analytics, keys, partials, token):
    group.register(app)


def main() -> None:
    """The `leadflow` script. No client of ours ever asks the broker to create a topic: each
    is configured by `Settings.aiokafka_kwargs()`, which forbids it first; a command that
    only reads files never imports Faust or aiokafka."""
    app()
