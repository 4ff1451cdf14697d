"""API tokens: named, scoped, configured as hashes; the access log holds no personal data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from streams.settings import Settings
from streams.web.access import (
    ADMIN,
    INGEST,
    LEGACY_NAME,
    READ,
    AccessLog,
    TokenConfigError,
    Tokens,
    bearer,
    parse_lines,
    token_hash,
)

INGEST_TOKEN, READ_TOKEN, ADMIN_TOKEN = "tok-ingest-" + "i" * 30, "tok-read-" + "r" * 30, "tok-adm"


def config() -> str:
    return (
        f"crm-sync:ingest:{token_hash(INGEST_TOKEN)}\n"
        f"# the dashboard\ndashboard:read:{token_hash(READ_TOKEN)}  # comment after\n"
        f"privacy-officer:admin,read:{token_hash(ADMIN_TOKEN)}"
    )


def test_each_token_is_identified_by_its_hash_with_its_own_scopes():
    tokens = Tokens.configured(tokens=config())
    ingest = tokens.identify(INGEST_TOKEN.encode())
    read = tokens.identify(READ_TOKEN.encode())
    admin = tokens.identify(ADMIN_TOKEN.encode())
    assert (ingest.name, read.name, admin.name) == ("crm-sync", "dashboard", "privacy-officer")
    assert ingest.allows(INGEST) and not ingest.allows(READ) and not ingest.allows(ADMIN)
    assert read.allows(READ) and not read.allows(INGEST) and not read.allows(ADMIN)
    assert admin.allows(ADMIN) and admin.allows(READ) and not admin.allows(INGEST)


@pytest.mark.parametrize(
    "presented",
    ["", "tok-read", READ_TOKEN + "x", READ_TOKEN[:-1], token_hash(READ_TOKEN), READ_TOKEN.upper()],
)
def test_an_unknown_token_or_the_hash_itself_identifies_no_one(presented: str):
    assert Tokens.configured(tokens=config()).identify(presented.encode()) is None


def test_semicolons_separate_tokens_in_one_environment_variable():
    one_line = f"a:read:{token_hash('a')}; b:ingest:{token_hash('b')};"
    assert [g.name for g in parse_lines(one_line, "env")] == ["a", "b"]


def test_the_single_legacy_token_still_works_with_every_scope():
    tokens = Tokens.configured(legacy_token="old-shared-secret", tokens=config())
    legacy = tokens.identify(b"old-shared-secret")
    assert legacy.name == LEGACY_NAME
    assert all(legacy.allows(s) for s in (INGEST, READ, ADMIN))
    assert tokens.identify(READ_TOKEN.encode()).name == "dashboard"  # both kinds at once


def test_settings_read_tokens_from_the_environment_and_a_secrets_file(tmp_path: Path, monkeypatch):
    secrets = tmp_path / "tokens"
    secrets.write_text(config())
    monkeypatch.setenv("LEADFLOW_API_TOKENS_FILE", str(secrets))
    monkeypatch.setenv("LEADFLOW_API_TOKENS", f"extra:read:{token_hash('extra-token')}")
    settings = Settings()
    names = sorted(g.name for g in settings.tokens().grants)
    assert names == ["crm-sync", "dashboard", "extra", "privacy-officer"]
    assert "extra-token" not in repr(settings) and token_hash("extra-token") not in repr(settings)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("dashboard:read", "expected name:scope,scope:sha256-hex"),
        ("dashboard:write:" + "a" * 64, "unknown scope(s) write"),
        ("dashboard::" + "a" * 64, "(none given)"),
        ("dash board:read:" + "a" * 64, "token name 'dash board'"),
        ("dashboard:read:my-plaintext-token", "not the token itself"),
    ],
)
def test_a_bad_token_line_is_one_error_naming_where_it_is(line: str, says: str):
    with pytest.raises(TokenConfigError) as error:
        parse_lines(f"ok:read:{'b' * 64}\n{line}", "tokens.txt")
    assert says in str(error.value) and str(error.value).startswith("tokens.txt:2")
    assert "my-plaintext-token" not in str(error.value)  # never echo what may be a secret


def test_the_same_name_twice_is_refused():
    with pytest.raises(TokenConfigError, match="configured twice"):
        Tokens.configured(tokens=f"a:read:{'b' * 64};a:ingest:{'c' * 64}")


def test_a_missing_tokens_file_is_named():
    with pytest.raises(TokenConfigError, match="LEADFLOW_API_TOKENS_FILE /nope/tokens"):
        Tokens.configured(tokens_file=Path("/nope/tokens"))


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", b"abc"),
        ("bearer abc", b"abc"),
        ("Basic abc", None),
        ("abc", None),
        ("Bearer ", None),
        ("", None),
        ("Bearer t\udcff", b"t\xff"),  # aiohttp's surrogates for non-UTF-8 bytes: as sent
    ],
)
def test_only_a_bearer_header_carries_a_token(header: str, token: bytes | None):
    assert bearer(header) == token


def test_the_access_log_is_one_json_line_with_token_name_route_and_person_ids(tmp_path: Path):
    path = tmp_path / "access" / "access.jsonl"
    log = AccessLog(path)
    try:
        log.record(
            token="dashboard",
            method="GET",
            route="/people/{person_id}",
            status=200,
            persons=["p-1"],
        )
        log.record(token=None, method="GET", route="/changes/recent", status=401)
    finally:
        for handler in log.logger.handlers[:]:
            handler.close()
            log.logger.removeHandler(handler)
        log.logger.propagate = True
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert set(first) == {"time", "token", "method", "route", "persons", "status", "forwarded"}
    assert first["token"] == "dashboard" and first["persons"] == ["p-1"]
    assert first["route"] == "/people/{person_id}" and first["status"] == 200
    assert second["token"] is None and second["status"] == 401 and second["persons"] == []


def test_without_a_file_the_access_log_goes_to_the_leadflow_access_logger(caplog):
    with caplog.at_level(logging.INFO, logger="leadflow.access"):
        AccessLog().record(token="t", method="GET", route="/x", status=200, persons=["p"])
    assert json.loads(caplog.records[-1].getMessage())["persons"] == ["p"]


def test_token_new_prints_a_token_and_the_line_that_accepts_it():
    result = CliRunner().invoke(app, ["token", "new", "--name", "crm", "--scopes", "ingest"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    grant = Tokens.configured(tokens=lines["config"]).identify(lines["token"].encode())
    assert grant.name == "crm" and grant.allows(INGEST) and not grant.allows(READ)


def test_token_hash_reads_stdin_and_never_takes_the_token_as_an_argument():
    result = CliRunner().invoke(app, ["token", "hash"], input="s3cret\n")
    assert result.exit_code == 0 and result.stdout.strip() == token_hash("s3cret")
    result = CliRunner().invoke(
        app, ["token", "hash", "--name", "dash", "--scopes", "read"], input="s3cret"
    )
    assert result.stdout.strip() == f"dash:read:{token_hash('s3cret')}"


def test_token_check_lists_names_and_scopes_or_names_the_bad_line(tmp_path: Path):
    good = tmp_path / "good"
    good.write_text(config())
    result = CliRunner().invoke(app, ["token", "check", "--file", str(good)])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "crm-sync: ingest",
        "dashboard: read",
        "privacy-officer: read, admin",
    ]
    bad = tmp_path / "bad"
    bad.write_text("x:read:plaintext")
    result = CliRunner().invoke(app, ["token", "check", "--file", str(bad)])
    assert result.exit_code == 2 and f"{bad}:1" in result.output
