"""`leadflow dev` (broker, topics, worker, API, dashboard and demo on this machine, no
Docker) and `leadflow broker` (one local broker in the foreground)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from streams.cli.common import err, fail, out
from streams.cli.running import (
    BrokerKind,
    run_until_signal,
)


def _dev_security(data_dir: Path, port: int | None) -> tuple[Any, Path]:
    """The dev CA, broker certificate and SCRAM user of a `--sasl-ssl` broker, made once in
    DATA_DIR/tls (a restart on the same data dir keeps them: the user lives in Kafka's
    metadata, created when the data dir was formatted)."""
    import secrets

    from streams.dev.kafka_dist import KafkaSecurity

    tls = data_dir / "tls"
    secret = tls / "scram-password"
    if not (tls / "ca.pem").exists():
        try:
            from streams.dev.dev_tls import make_certificates
        except ImportError:
            message = "--sasl-ssl needs the `cryptography` package: pip install cryptography"
            raise fail(message) from None
        make_certificates(tls)
    if not secret.exists():
        secret.write_text(secrets.token_urlsafe(24))
        secret.chmod(0o600)
    users = {"leadflow": secret.read_text().strip()}
    return KafkaSecurity(tls / "broker-keystore.pem", users), tls / "client.env"


def _write_client_env(path: Path, url: str) -> None:
    """The LEADFLOW_* settings a client needs, in a file only its owner reads."""
    password = (path.parent / "scram-password").read_text().strip()
    path.write_text(
        f"LEADFLOW_BROKER={url}\nLEADFLOW_SECURITY_PROTOCOL=SASL_SSL\n"
        f"LEADFLOW_SASL_MECHANISM=SCRAM-SHA-512\nLEADFLOW_SASL_USERNAME=leadflow\n"
        f"LEADFLOW_SASL_PASSWORD={password}\nLEADFLOW_SSL_CAFILE={path.parent / 'ca.pem'}\n"
    )
    path.chmod(0o600)


# --- dev ----------------------------------------------------------------------------------


def dev(
    port: Annotated[int | None, typer.Option(help="broker port (default: a free one)")] = None,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="publish a demo stream")] = True,
    persons: Annotated[int, typer.Option(min=1, help="persons in the demo stream")] = 3_000,
    events: Annotated[int, typer.Option(min=1, help="events in the demo stream")] = 30_000,
    rate: Annotated[
        float, typer.Option(min=0, help="demo events per second (0: as fast as possible)")
    ] = 0.0,
    web_port: Annotated[int, typer.Option(help="worker HTTP API and dashboard port")] = 6066,
    topic_prefix: Annotated[str, typer.Option("--topic-prefix")] = "",
    data_dir: Annotated[
        Path, typer.Option(help="worker state and logs; wiped at every start")
    ] = Path("data/dev"),
    policy: Annotated[Path | None, typer.Option("--policy", "-p", dir_okay=False)] = None,
    preset: Annotated[str | None, typer.Option("--preset")] = None,
    session_timeout: Annotated[
        float, typer.Option(help="worker consumer-group session timeout, seconds")
    ] = 6.0,
    broker_kind: Annotated[
        BrokerKind,
        typer.Option(
            "--broker-kind",
            help="tansu: light, in memory; kafka: genuine Apache Kafka (needs Java 17+)",
        ),
    ] = BrokerKind.tansu,
) -> None:
    """Everything on this machine, no Docker: broker, topics, worker, API, dashboard, demo."""
    from streams.dev.broker import BrokerStartError, TansuNotInstalled
    from streams.dev.devstack import DevError, DevOptions, DevStack

    options = DevOptions(
        port=port,
        web_port=web_port,
        demo=demo,
        persons=persons,
        events=events,
        rate=rate,
        topic_prefix=topic_prefix,
        data_dir=data_dir,
        session_timeout=session_timeout,
        policy=policy,
        preset=preset,
        broker_kind=broker_kind.value,
    )
    stack = DevStack(options, out)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            stack.start()
            _, interrupted = run_until_signal(_dev_session(stack))
        except (DevError, BrokerStartError, TansuNotInstalled) as error:
            raise fail(str(error), 1) from None
        except KeyboardInterrupt:
            interrupted = True
        if interrupted:
            out.print("stopping…")
    finally:
        _stop_shielded(stack.stop, previous)
    out.print("worker and broker stopped")


def _stop_shielded(stop: Callable[[], None], previous: Any) -> None:
    """Run `stop` with SIGINT and SIGTERM ignored (a second Ctrl-C must not orphan a child),
    then give Ctrl-C its default and SIGTERM its `previous` handler back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stop()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


async def _dev_session(stack: Any) -> None:
    o, s = stack.options, stack.settings
    b = stack.broker
    out.print(f"broker     {s.broker}  ({b.kind}, pid {b.pid}; log {b.log_path})")
    topics = await stack.create_topics()
    worker = stack.start_worker()
    out.print(f"worker     starting (pid {worker.pid}; log {worker.log_path})", highlight=False)
    seconds = await stack.wait_for_worker()
    cli = f"--broker {s.broker}" + (f" --topic-prefix {o.topic_prefix}" if o.topic_prefix else "")
    out.print(
        f"[bold green]leadflow dev is up[/bold green] (worker ready in {seconds:.1f}s)\n"
        f"  dashboard  {stack.dashboard_link}  (signs in with a read-only token)\n"
        f"  token      {stack.token}"
        + (
            "  (every scope; generated for this session; set LEADFLOW_API_TOKEN to choose one)\n"
            if stack.token_generated
            else "  (every scope; from LEADFLOW_API_TOKEN)\n"
        )
        + f"  reports    {stack.web_url}/reports/calibration, /reports/cohorts\n"
        f"  API        {stack.web_url}/people/ID, /people/ID/history, /funnel, "
        f"/changes/recent, /policies\n"
        f"  health     {stack.web_url}/healthz  metrics {stack.web_url}/metrics\n"
        f"  topics     {', '.join(topics)}\n"
        f"  tail       leadflow tail {cli} --topic stage-changes\n"
        f"  send       leadflow send events.jsonl {cli}\n"
        f"  export     leadflow export-history {cli} --out history.jsonl\n"
        + (
            f"  master key LEADFLOW_MASTER_KEY_FILE={stack.master_key_path}  (export, replay "
            "and verify open personal fields with it; without it they stay sealed)\n"
            if stack.master_key_generated
            else ""
        )
        + "  stop       Ctrl-C",
        highlight=False,
    )
    demo_task = None
    if o.demo:
        out.print(f"publishing {o.events:,} demo events for {o.persons:,} persons…")
        demo_task = asyncio.create_task(stack.publish_demo())

        def done(task: asyncio.Task[int]) -> None:
            if task.cancelled():
                return
            if task.exception() is not None:
                err.print(f"demo stream failed: {task.exception()!r}")
            else:
                out.print(f"published {task.result():,} demo events")

        demo_task.add_done_callback(done)
    try:
        await stack.watch()
    finally:
        if demo_task is not None:
            demo_task.cancel()


# --- broker -------------------------------------------------------------------------------


def broker(
    kind: Annotated[
        BrokerKind, typer.Option("--kind", help="kafka: Apache Kafka (Java 17+); tansu: in memory")
    ] = BrokerKind.kafka,
    port: Annotated[int | None, typer.Option(help="client port (default: a free one)")] = None,
    data_dir: Annotated[
        Path,
        typer.Option(help="Kafka's data (kept across starts); Tansu keeps nothing"),
    ] = Path("data/broker"),
    sasl_ssl: Annotated[
        bool,
        typer.Option(
            "--sasl-ssl",
            help="Kafka only: clients on SASL_SSL (SCRAM-SHA-512, a dev CA in DATA_DIR/tls); "
            "prints the file of LEADFLOW_* settings clients source",
        ),
    ] = False,
) -> None:
    """One local broker in the foreground until Ctrl-C or SIGTERM (Kafka: data kept)."""
    from streams.dev.broker import BrokerStartError, TansuNotInstalled, local_broker

    client_env: Path | None = None
    if sasl_ssl and kind is not BrokerKind.kafka:
        raise fail("--sasl-ssl needs --kind kafka (Tansu has no SASL or TLS)")
    if kind is BrokerKind.kafka:
        security = None
        if sasl_ssl:
            security, client_env = _dev_security(data_dir, port)
        local = local_broker("kafka", port, data_dir=data_dir, security=security)
    else:
        local = local_broker("tansu", port)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            local.start()
        except (BrokerStartError, TansuNotInstalled) as error:
            raise fail(str(error), 1) from None
        kept = f"data in {data_dir}" if local.keeps_data else "memory only: a restart loses all"
        out.print(
            f"{local.kind} broker at {local.bootstrap} (pid {local.pid}, ready in "
            f"{local.start_seconds:.1f}s; {kept}; log {local.log_path}). Ctrl-C stops it.",
            highlight=False,
        )
        if client_env is not None:
            _write_client_env(client_env, local.url)
            out.print(
                f"SASL_SSL (SCRAM-SHA-512): clients use the settings in {client_env} "
                f"(`set -a; . {client_env}; set +a`)",
                highlight=False,
            )
        with contextlib.suppress(KeyboardInterrupt):
            while local.running:
                time.sleep(0.5)
            if local.pid is not None:
                raise fail(f"the broker exited; log {local.log_path}", 1)
    finally:
        _stop_shielded(local.stop, previous)
    out.print("broker stopped")


def register(app: typer.Typer) -> None:
    """Add `dev` and `broker` to `app`."""
    app.command()(dev)
    app.command()(broker)
