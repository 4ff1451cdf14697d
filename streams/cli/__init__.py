"""The `leadflow` command: `main` holds the typer app and the offline commands, `common` the
consoles, the one-line error and the shared options; one module per command group (worker,
tools, imports, analytics, partials, token). The only place typer and rich are imported.

May import everything else in `streams`; nothing imports `streams.cli`.
"""
