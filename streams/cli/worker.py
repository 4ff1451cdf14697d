"""`leadflow worker`: the production worker against any Kafka.

Every flag can also come from a `LEADFLOW_*` environment variable (`streams.settings`); a
flag wins over the environment. SASL/SSL settings come only from the environment
(`LEADFLOW_SECURITY_PROTOCOL`, `LEADFLOW_SASL_USERNAME`, `LEADFLOW_SASL_PASSWORD`, …).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from events.codec import describe_validation_error
from lifecycle.policy import PolicyError, named_policy, resolve_policy
from streams.web.access import TokenConfigError


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("worker")(worker)


def worker(
    broker: str | None = typer.Option(None, help="kafka://host:port[,…] (env LEADFLOW_BROKER)"),
    policy: Path | None = typer.Option(None, help="policy YAML file (env LEADFLOW_POLICY)"),
    preset: str | None = typer.Option(
        None, help="shipped policy: default, seed, growth, mature (env LEADFLOW_PRESET)"
    ),
    data_dir: Path | None = typer.Option(
        None, help="local table store directory (env LEADFLOW_DATA_DIR)"
    ),
    web_port: int | None = typer.Option(None, help="HTTP port (env LEADFLOW_WEB_PORT)"),
    web_host: str | None = typer.Option(None, help="HTTP bind address (env LEADFLOW_WEB_HOST)"),
    partitions: int | None = typer.Option(
        None, help="partitions of topics it creates (env LEADFLOW_PARTITIONS)"
    ),
    topic_prefix: str | None = typer.Option(
        None, help="prefix of every topic name (env LEADFLOW_TOPIC_PREFIX)"
    ),
    exactly_once: bool | None = typer.Option(
        None,
        "--exactly-once/--at-least-once",
        help="Kafka transactions (needs broker support) (env LEADFLOW_EXACTLY_ONCE)",
    ),
    store: str | None = typer.Option(
        None, help="table store: rocksdb or memory (env LEADFLOW_STORE)"
    ),
    sweep_interval: float | None = typer.Option(
        None, help="seconds between inactivity sweeps (env LEADFLOW_SWEEP_INTERVAL)"
    ),
    session_timeout: float | None = typer.Option(
        None, help="consumer group session, seconds (env LEADFLOW_SESSION_TIMEOUT)"
    ),
    shadow: list[str] | None = typer.Option(
        None,
        help="candidate policy (file or preset) to run in shadow; repeatable (env LEADFLOW_SHADOW)",
    ),
    canonical_url: str | None = typer.Option(
        None, help="URL other workers reach this one at (env LEADFLOW_CANONICAL_URL)"
    ),
    loglevel: str = typer.Option("info", help="debug, info, warning, error"),
) -> None:
    """Run the lifecycle worker: decide every event, publish stage changes and history."""
    flags: dict[str, Any] = {
        "broker": broker,
        "policy": policy,
        "preset": preset,
        "data_dir": data_dir,
        "web_port": web_port,
        "web_host": web_host,
        "partitions": partitions,
        "topic_prefix": topic_prefix,
        "exactly_once": exactly_once,
        "store": store,
        "sweep_interval": sweep_interval,
        "session_timeout": session_timeout,
        "shadow": shadow or None,
        "canonical_url": canonical_url,
    }
    try:
        from streams.settings import Settings

        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as error:
        typer.echo(f"leadflow worker: {describe_validation_error(error)}", err=True)
        raise typer.Exit(2) from None
    try:
        settings.tokens()  # a bad token line stops the worker here, naming it
    except TokenConfigError as error:
        typer.echo(f"leadflow worker: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        lead_definition = resolve_policy(settings.policy, settings.preset)
        for candidate in settings.shadow:
            named_policy(candidate)  # fail now, with the file and line, not inside Faust
    except PolicyError as error:
        typer.echo(f"leadflow worker: {error}", err=True)
        raise typer.Exit(2) from None

    from aiokafka.errors import KafkaError

    from streams.kafka.exactly_once import TransactionsUnsupported
    from streams.kafka.keys import MasterKeyError, MasterKeys
    from streams.worker.run import run

    try:
        master = settings.master_keys()
        if master is None:
            MasterKeys.required({})  # raises the one-line "no master key" error
    except MasterKeyError as error:
        typer.echo(f"leadflow worker: {error}", err=True)
        raise typer.Exit(2) from None

    try:
        run(settings, lead_definition, loglevel=loglevel)
    except TransactionsUnsupported as error:
        typer.echo(f"leadflow worker: {error}", err=True)
        raise typer.Exit(2) from None
    except (OSError, KafkaError) as error:
        typer.echo(f"leadflow worker: cannot use the broker {settings.broker}: {error}", err=True)
        raise typer.Exit(1) from None
