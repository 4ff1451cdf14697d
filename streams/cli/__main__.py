"""`python -m streams.cli`: the `leadflow` command."""

from streams.cli.main import main

main()
