"""What every `leadflow` command group shares: the consoles, the one-line error, the options.

Two kinds of broker option, because they mean different things: the offline commands
(replay, verify, funnel, simulate, calibrate) read the history topic from `--broker`
*instead of a file* and default to no prefix; the runtime tools (send, tail, export-history,
reconcile, topics) always talk to a broker and default to the `LEADFLOW_*` variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from lifecycle.policy import PRESETS

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` (the message verbatim, never read as markup) and return the
    exit to raise."""
    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False)
    return typer.Exit(code)


# -- offline commands: events or history from a file, or the history topic -----------------
PolicyOpt = Annotated[
    Path | None, typer.Option("--policy", "-p", help="policy YAML file", dir_okay=False)
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help=f"a shipped policy: {', '.join(PRESETS)}")
]
EventsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--events",
        "-e",
        help="JSONL of events or an exported history; CSV exports with --mapping "
        "(repeatable: several exports read as `leadflow import` reads them)",
        dir_okay=False,
    ),
]
HistoryBrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", help="read the history topic from this broker instead of a file"),
]
HistoryPrefixOpt = Annotated[str, typer.Option("--topic-prefix", help="topic name prefix")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="stop at the first bad line")]
MappingOpt = Annotated[
    Path | None,
    typer.Option("--mapping", "-m", help="read --events CSV by this mapping (leadflow import)"),
]

# -- runtime tools: a broker always, defaults from the environment -------------------------
BrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", help="kafka://host:port[,…] (default: $LEADFLOW_BROKER)"),
]
PrefixOpt = Annotated[
    str | None,
    typer.Option("--topic-prefix", help="topic name prefix (default: $LEADFLOW_TOPIC_PREFIX)"),
]
