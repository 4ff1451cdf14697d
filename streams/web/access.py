"""Who may call what: named API tokens with scopes, kept as hashes, and the access log.

Scopes (`SCOPES`): ``ingest`` posts events, ``read`` shows persons (state, timeline, recent
changes), ``admin`` erases (a `person_erased` event on ``POST /events``) and answers the
workers' internal questions. A token is configured as ``name:scope,scope:sha256-hex`` in
``LEADFLOW_API_TOKENS`` (several separated by ``;`` or new lines) or in the file named by
``LEADFLOW_API_TOKENS_FILE`` (one a line, ``#`` comments): the worker only ever holds the
SHA-256 of a token, so neither its settings nor its logs can show one. `leadflow token new`
makes a token and its line, `leadflow token hash` hashes an existing one.

Tokens are random (≥ 128 bits, as `token new` makes them), so one SHA-256 is enough; a slow
password hash would only slow every request. ``LEADFLOW_API_TOKEN`` (one plaintext token,
the older setting) still works: it is the token named ``api-token`` with every scope.

No faust or aiohttp here: the HTTP views (`streams.web.api`) ask `Tokens.identify` and
`Grant.allows`, and write `AccessLog` lines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

INGEST, READ, ADMIN = "ingest", "read", "admin"
SCOPES = (INGEST, READ, ADMIN)
#: The name `LEADFLOW_API_TOKEN` (one token, every scope) goes by in the access log.
LEGACY_NAME = "api-token"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class TokenConfigError(ValueError):
    """A token line that cannot be used; `str()` says where and what to write instead."""


def token_hash(token: str | bytes) -> str:
    """The hex SHA-256 the configuration holds for `token`."""
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Grant:
    """A configured token: its name (for the access log) and its scopes; never the token."""

    name: str
    scopes: frozenset[str]
    digest: bytes = field(repr=False)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def line(self) -> str:
        return f"{self.name}:{','.join(s for s in SCOPES if s in self.scopes)}:{self.digest.hex()}"


def parse_line(line: str, where: str) -> Grant:
    """One ``name:scope,scope:sha256-hex`` line; `where` names it in errors (file:line)."""
    parts = line.strip().split(":")
    if len(parts) != 3:
        raise TokenConfigError(
            f"{where}: expected name:scope,scope:sha256-hex (got {len(parts)} part(s)); "
            "`leadflow token new --name NAME --scopes read` prints such a line"
        )
    name, scopes_text, digest = (p.strip() for p in parts)
    if not _NAME.match(name):
        raise TokenConfigError(
            f"{where}: token name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
        )
    scopes = {s.strip() for s in scopes_text.split(",") if s.strip()}
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise TokenConfigError(
            f"{where}: token {name!r}: unknown scope(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SCOPES)}"
        )
    digest = digest.lower()
    if not _HEX.match(digest):
        # Never echo the value: it may be a plaintext token pasted by mistake.
        raise TokenConfigError(
            f"{where}: token {name!r}: the third part must be the 64-hex-digit SHA-256 of the "
            "token, not the token itself (`leadflow token hash` prints it)"
        )
    return Grant(name, frozenset(scopes), bytes.fromhex(digest))


def parse_lines(text: str, source: str) -> list[Grant]:
    """Every token in `text` (new lines or ``;`` between them, ``#`` starts a comment)."""
    grants = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0]
        for index, item in enumerate(line.split(";")):
            if item.strip():
                where = f"{source}:{number}" + (f" (item {index + 1})" if index else "")
                grants.append(parse_line(item, where))
    return grants


class Tokens:
    """The tokens a worker accepts; `identify` finds the grant of a presented bearer token."""

    def __init__(self, grants: Iterable[Grant]) -> None:
        self.grants = list(grants)
        names = [g.name for g in self.grants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TokenConfigError(
                f"token name(s) {', '.join(duplicates)} configured twice: the access log "
                "could not tell them apart"
            )

    @classmethod
    def configured(
        cls,
        *,
        tokens: str | None = None,
        tokens_file: Path | None = None,
        legacy_token: str | None = None,
    ) -> Tokens:
        """From the settings: `LEADFLOW_API_TOKENS`, its file, and the older single token."""
        grants: list[Grant] = []
        if tokens:
            grants += parse_lines(tokens, "LEADFLOW_API_TOKENS")
        if tokens_file is not None:
            try:
                text = tokens_file.read_text(encoding="utf-8")
            except OSError as error:
                raise TokenConfigError(
                    f"LEADFLOW_API_TOKENS_FILE {tokens_file}: cannot read it ({error.strerror})"
                ) from None
            grants += parse_lines(text, str(tokens_file))
        if legacy_token:
            digest = bytes.fromhex(token_hash(legacy_token))
            grants.append(Grant(LEGACY_NAME, frozenset(SCOPES), digest))
        return cls(grants)

    def __bool__(self) -> bool:
        return bool(self.grants)

    def identify(self, presented: bytes) -> Grant | None:
        """The grant whose hash matches; every grant is compared (constant time per hash)."""
        digest = hashlib.sha256(presented).digest()
        found = None
        for grant in self.grants:
            if hmac.compare_digest(digest, grant.digest):
                found = grant
        return found


def bearer(header: str) -> bytes | None:
    """The token bytes of an ``Authorization: Bearer …`` header, as sent; None otherwise."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return None
    # aiohttp decodes header bytes that are not UTF-8 to lone surrogates; plain `.encode()`
    # would raise on them (a 500): get the bytes back as sent instead.
    return given.encode("utf-8", "surrogateescape")


#: The logger every personal-data access goes to; the operator routes it (or sets a file).
ACCESS_LOGGER = "leadflow.access"


class AccessLog:
    """One JSON line per request to a personal-data route: when, which token, which route
    and method, which person id(s), the answer's status. Never a profile field, never a
    token: the person id is the only identifier in it.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.logger.setLevel(logging.INFO)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(handler)
            self.logger.propagate = False  # the file is the access log; keep it off stderr

    def record(
        self,
        *,
        token: str | None,
        method: str,
        route: str,
        status: int,
        persons: list[str] | None = None,
        forwarded: bool = False,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        entry = {
            "time": (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
            "token": token,
            "method": method,
            "route": route,
            "persons": persons or [],
            "status": status,
            "forwarded": forwarded,
        }
        self.logger.info(json.dumps(entry, ensure_ascii=True))
        return entry
