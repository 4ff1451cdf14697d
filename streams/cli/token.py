"""`leadflow token new | hash | check`: API tokens for operators, who never write plaintext.

`new` prints a fresh token once (for the client) and the line the worker's configuration takes
(`name:scopes:sha256-hex`, for `LEADFLOW_API_TOKENS` or its file); `hash` prints the hash of
an existing token read from stdin (not an argument: shell history and `ps` would show it);
`check` reads a token configuration and says which names and scopes it grants.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from streams.web.access import (
    SCOPES,
    Grant,
    TokenConfigError,
    Tokens,
    new_token,
    parse_line,
    token_hash,
)

token_app = typer.Typer(
    no_args_is_help=True, help="API tokens: make one, hash one, check a config."
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.add_typer(token_app, name="token")


ScopesOpt = Annotated[
    str, typer.Option("--scopes", help=f"comma-separated, from {', '.join(SCOPES)}")
]


def _grant_line(name: str, scopes: str, token: str) -> str:
    try:
        return parse_line(f"{name}:{scopes}:{token_hash(token)}", "--name/--scopes").line()
    except TokenConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Option("--name", help="shown in the access log")],
    scopes: ScopesOpt = "read",
) -> None:
    """Make a random token: the token (give it to the client, once) and its config line."""
    token = new_token()
    line = _grant_line(name, scopes, token)
    typer.echo(f"token   {token}")
    typer.echo(f"config  {line}")
    typer.echo(
        "give the token to the client; put the config line in LEADFLOW_API_TOKENS (';' between "
        "lines) or LEADFLOW_API_TOKENS_FILE. The token is not stored anywhere.",
        err=True,
    )


@token_app.command("hash")
def token_hash_command(
    name: Annotated[
        str | None, typer.Option("--name", help="print a whole config line for this name")
    ] = None,
    scopes: ScopesOpt = "read",
) -> None:
    """Read a token from stdin (first line); print its SHA-256, or its config line with --name."""
    if sys.stdin.isatty():
        import getpass

        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.readline().rstrip("\r\n")
    if not token:
        typer.echo(
            'error: no token on stdin (e.g. `printf %s "$TOKEN" | leadflow token hash`)', err=True
        )
        raise typer.Exit(2)
    typer.echo(_grant_line(name, scopes, token) if name else token_hash(token))


@token_app.command("check")
def token_check(
    file: Annotated[
        Path | None, typer.Option("--file", help="a tokens file (default: the environment)")
    ] = None,
) -> None:
    """Validate a token configuration; list each token's name and scopes (never a hash)."""
    from streams.settings import Settings

    try:
        tokens = Tokens.configured(tokens_file=file) if file else Settings().tokens()
    except TokenConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if not tokens:
        typer.echo("no tokens configured: personal data routes answer 503", err=True)
        raise typer.Exit(1)
    for grant in tokens.grants:
        typer.echo(f"{grant.name}: {', '.join(_ordered(grant))}")


def _ordered(grant: Grant) -> list[str]:
    return [s for s in SCOPES if grant.allows(s)]
