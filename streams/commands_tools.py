"""Operator tools: `topics create`, `send`, `tail`, `export-history`, `reconcile`, `dev`, `broker`.

Commands parse options, build `Settings` (flags win over `LEADFLOW_*` variables) and call the
modules that do the work (`streams.publish`, `streams.tail`, `streams.export`,
`streams.reconcile`, `streams.devstack`); nothing here holds a rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from events.codec import describe_validation_error
from events.inbound import Event, Profile
from streams.commands_common import BrokerOpt, PrefixOpt, err, fail, out
from streams.settings import Settings

T = TypeVar("T")


class BrokerKind(StrEnum):
    kafka = "kafka"
    tansu = "tansu"


class TopicChoice(StrEnum):
    stage_changes = "stage-changes"
    history = "history"
    dead_letters = "dead-letters"
    events = "events"
    policies = "policies"


def _problem(error: BaseException) -> str:
    """`Type: message` without repeating the type when the message already starts with it."""
    text = str(error)
    name = type(error).__name__
    return text if text.startswith(name) else f"{name}: {text}".rstrip(": ")


def _settings(**flags: Any) -> Settings:
    """Settings from the environment, with every flag the user gave taking precedence."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as error:
        raise fail(f"settings: {describe_validation_error(error)}") from None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _run_until_signal(main: Coroutine[Any, Any, T]) -> tuple[T | None, bool]:
    """Run `main`; SIGINT/SIGTERM cancel it (its `finally` blocks still run).

    Returns (result, interrupted). Cancellation is how aiokafka clients get closed cleanly;
    a KeyboardInterrupt raised into the middle of a library call would skip that.
    """

    async def runner() -> tuple[T | None, bool]:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main)
        stopped = False

        def stop() -> None:
            nonlocal stopped
            stopped = True
            task.cancel()

        # Signal handlers can only be set from the main thread (not when called in a thread).
        signals = (signal.SIGINT, signal.SIGTERM) if _in_main_thread() else ()
        for sig in signals:
            loop.add_signal_handler(sig, stop)
        try:
            return await task, False
        except asyncio.CancelledError:
            if stopped:
                return None, True
            raise
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


def _check_broker(s: Settings) -> None:
    """One connection with the settings' security, or exit with the one line saying why."""
    from streams.preflight import BrokerAccessError, check_broker

    try:
        asyncio.run(check_broker(s))
    except BrokerAccessError as error:
        raise fail(str(error), 1) from None


def _run_against_broker(s: Settings, main: Coroutine[Any, Any, T]) -> tuple[T | None, bool]:
    """`_run_until_signal`, with a missing topic or an unreachable broker as a one-line error
    (one connection first: wrong credentials or an untrusted certificate fail at once)."""
    from streams.keys import MasterKeyError
    from streams.topics import TopicNotFound

    try:
        _check_broker(s)
    except typer.Exit:
        main.close()
        raise
    try:
        return _run_until_signal(main)
    except MasterKeyError as error:  # a malformed LEADFLOW_MASTER_KEY: one line, no key in it
        raise fail(str(error), 2) from None
    except TopicNotFound as missing:
        hint = "(run `leadflow topics create`?)"
        raise fail(f"no topic {missing} on {s.bootstrap} {hint}") from None
    except Exception as error:  # cannot reach the broker, topic authorisation, …
        raise fail(f"{s.bootstrap}: {_problem(error)}", 1) from None


# --- topics -------------------------------------------------------------------------------

topics_app = typer.Typer(no_args_is_help=True, help="The leadflow topics.")


@topics_app.command("create")
def topics_create(
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
    partitions: Annotated[int | None, typer.Option(min=1, help="default 4")] = None,
    replication: Annotated[int | None, typer.Option(min=1, help="default 1")] = None,
) -> None:
    """Create every leadflow topic that is missing, with its retention and cleanup configs.

    Safe to run again: existing topics are left alone, but one whose partition count or
    configs differ from the spec is reported (exit code 1).
    """
    from streams.topics import TopicSpecMismatch, changelog_spec, ensure_topics, topic_specs

    s = _settings(
        broker=broker, topic_prefix=topic_prefix, partitions=partitions, replication=replication
    )
    specs = [
        *topic_specs(s.topics, s.partitions, s.replication),
        changelog_spec(s.topic_prefix, s.partitions, s.replication),
    ]
    from streams.preflight import BrokerAccessError, check_broker

    async def create() -> Any:
        await check_broker(s)
        return await ensure_topics(s.bootstrap, specs, client_options=s.aiokafka_kwargs())

    try:
        result = asyncio.run(create())
    except (TopicSpecMismatch, BrokerAccessError) as error:
        raise fail(str(error), 1) from None
    except Exception as error:  # connection problems: say where we tried
        raise fail(f"{s.bootstrap}: {_problem(error)}", 1) from None
    for spec in specs:
        state = "[green]created[/green]" if spec.name in result.created else "exists "
        details = [f"{spec.partitions} partition{'s' if spec.partitions != 1 else ''}"]
        details += [f"{k}={v}" for k, v in spec.configs.items()]
        out.print(f"{state}  {spec.name}  ({', '.join(details)})", highlight=False)
    out.print(f"{len(result.created)} created, {len(result.existing)} already existed")


# --- send ---------------------------------------------------------------------------------

_CSV_TARGETS = set(Event.model_fields) | {f"profile.{f}" for f in Profile.model_fields}


def _csv_map(pairs: list[str] | None) -> dict[str, str]:
    columns: dict[str, str] = {}
    for pair in pairs or []:
        target, sep, header = pair.partition("=")
        target, header = target.strip(), header.strip()
        if not sep or not target or not header:
            raise fail(f"--csv-map {pair!r}: expected FIELD=HEADER, e.g. person_id='Contact ID'")
        if target not in _CSV_TARGETS:
            known = ", ".join(sorted(_CSV_TARGETS))
            raise fail(f"--csv-map {pair!r}: {target!r} is not an event field ({known})")
        columns[target] = header
    return columns


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return max(count - (1 if path.suffix.lower() == ".csv" else 0), 1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
    )


def _send_mapping(file: Path, csv_map: list[str] | None, mapping: Path | None) -> Any:
    """The mapping `send` reads a CSV FILE by (a mapping file, or the `--csv-map` shorthand
    for one), checked against its header before anything is sent; None for JSONL."""
    from streams.mapping import (
        MappingError,
        check_files,
        columns_mapping,
        load_mapping,
        read_header,
    )

    columns = _csv_map(csv_map)
    if (csv_map or mapping) and file.suffix.lower() != ".csv":
        raise fail("--csv-map and --mapping apply to .csv files only")
    if csv_map and mapping:
        raise fail("give --csv-map or --mapping (not both)")
    if file.suffix.lower() != ".csv":
        return None
    try:
        rules = load_mapping(mapping) if mapping else columns_mapping(columns, read_header(file))
        check_files([file], rules)
    except MappingError as error:
        raise fail(str(error)) from None
    return rules


def _send_events(file: Path, rules: Any, stats: Any, report: Any) -> Iterator[Event]:
    """FILE's events: a CSV through the mapping engine, JSONL as it is."""
    from streams.files import read_events
    from streams.mapping import ImportStats, read_mapped

    if rules is None:
        yield from read_events(file, stats=stats, on_error=report)
        return
    mapped = ImportStats()
    try:
        yield from read_mapped([file], rules, stats=mapped, on_error=report)
    finally:
        stats.lines, stats.bad = mapped.lines, mapped.bad


def send(
    file: Annotated[
        Path | None, typer.Argument(help="JSONL (events or an exported history) or CSV")
    ] = None,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
    csv_map: Annotated[
        list[str] | None,
        typer.Option(
            "--csv-map",
            metavar="FIELD=HEADER",
            help="CSV column for an event field, e.g. person_id='Contact ID' or "
            "profile.job_title=Title (repeatable; shorthand for a --mapping)",
        ),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option("--mapping", "-m", help="CSV rows → events by this mapping (see import)"),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="send nothing and exit 1 if any line is invalid")
    ] = False,
    demo: Annotated[
        int | None, typer.Option("--demo", metavar="N", help="send N synthetic events instead")
    ] = None,
    persons: Annotated[int, typer.Option(min=1, help="persons in the --demo stream")] = 1_000,
    seed: Annotated[int, typer.Option(help="seed of the --demo stream")] = 7,
    rate: Annotated[
        float, typer.Option(min=0, help="events per second (0: as fast as possible)")
    ] = 0.0,
) -> None:
    """Publish events to the events topic, keyed by person id, with a progress bar.

    Every line is validated first; an invalid one is reported on stderr as FILE:LINE: reason
    and skipped (with --strict: nothing is sent).
    """
    from streams.files import BadLine, ReadStats
    from streams.publish import encode_event, publish

    if (file is None) == (demo is None):
        raise fail("give a FILE or --demo N (not both)")
    s = _settings(broker=broker, topic_prefix=topic_prefix)
    stats = ReadStats()
    progress = _progress()

    def report(error: BadLine) -> None:
        progress.console.print(str(error), markup=False, highlight=False)

    messages: Iterator[tuple[bytes, bytes]]
    if demo is not None:
        from streams.demo import synthetic_events

        total, label = demo, f"demo ({persons:,} persons)"
        messages = (encode_event(e) for e in synthetic_events(persons, demo, seed=seed))
    else:
        assert file is not None
        if not file.is_file():
            raise fail(f"{file}: no such file")
        rules = _send_mapping(file, csv_map, mapping)
        total, label = _count_lines(file), file.name
        if strict:  # validate everything first: a strict send is all or nothing
            for _ in _send_events(file, rules, stats, report):
                pass
            if stats.bad:
                out.print(f"sent 0, invalid {stats.bad} of {stats.lines} (--strict: nothing sent)")
                raise typer.Exit(1)
            stats = ReadStats()
        messages = (encode_event(e) for e in _send_events(file, rules, stats, report))

    confirmed = 0
    _check_broker(s)  # before the progress bar: a refused start is one line
    with progress:
        task = progress.add_task(f"sending {label}", total=total)

        def sent(n: int) -> None:
            nonlocal confirmed
            confirmed += n
            progress.advance(task, n)

        result, interrupted = _run_against_broker(s, publish(s, messages, on_sent=sent, rate=rate))
        progress.update(task, total=confirmed + (result.failed if result else 0))
    if interrupted or result is None:
        out.print(f"interrupted: sent {confirmed:,}, invalid {stats.bad}")
        raise typer.Exit(130)
    out.print(
        f"sent {result.sent:,} to {s.topics.events} in {result.seconds:.1f}s "
        f"({result.rate:,.0f}/s), invalid {stats.bad}"
        + (f", failed {result.failed}" if result.failed else ""),
        highlight=False,
    )
    for message in result.errors:
        err.print(f"delivery failed: {message}", markup=False)
    if result.failed or (strict and stats.bad):
        raise typer.Exit(1)


# --- tail ---------------------------------------------------------------------------------


def tail(
    topic: Annotated[TopicChoice, typer.Option("--topic", help="which topic")] = (
        TopicChoice.stage_changes
    ),
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="start at the oldest record")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="exit after this many records")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="print raw JSON lines")] = False,
    idle_timeout: Annotated[
        float | None, typer.Option(help="exit after this many seconds without a record")
    ] = None,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Follow a topic in readable form (Ctrl-C to stop). No consumer group is used."""
    import sys

    from streams.tail import as_json, follow, render

    s = _settings(broker=broker, topic_prefix=topic_prefix)
    which = topic.value

    def emit(record: Any) -> None:
        if json_lines:
            sys.stdout.write(as_json(record) + "\n")
            sys.stdout.flush()
        else:
            out.print(render(which, record), highlight=False)

    _run_against_broker(
        s,
        follow(
            s,
            which,
            emit,
            from_beginning=from_beginning,
            limit=limit,
            idle_timeout=idle_timeout,
        ),
    )


def _dev_security(data_dir: Path, port: int | None) -> tuple[Any, Path]:
    """The dev CA, broker certificate and SCRAM user of a `--sasl-ssl` broker, made once in
    DATA_DIR/tls (a restart on the same data dir keeps them: the user lives in Kafka's
    metadata, created when the data dir was formatted)."""
    import secrets

    from streams.kafka_dist import KafkaSecurity

    tls = data_dir / "tls"
    secret = tls / "scram-password"
    if not (tls / "ca.pem").exists():
        try:
            from streams.dev_tls import make_certificates
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


# --- export-history -----------------------------------------------------------------------


def export_history(
    out_file: Annotated[Path, typer.Option("--out", help="history JSONL to write", dir_okay=False)],
    policies_out: Annotated[
        Path | None,
        typer.Option(
            help="policies JSONL to write (default: <out>.policies.jsonl)", dir_okay=False
        ),
    ] = None,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Dump the whole history topic (and every policy version) to JSONL for verify/replay.

    Reads each partition to its true end, in partition and offset order.
    """
    from streams.export import export_history as run

    s = _settings(broker=broker, topic_prefix=topic_prefix)
    policies_out = policies_out or out_file.with_name(out_file.name + ".policies.jsonl")
    progress = Progress(
        TextColumn("{task.description}"), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    _check_broker(s)  # before the progress bar: a refused start is one line
    with progress:
        task = progress.add_task(f"reading {s.topics.history}", total=None)

        def report(message: str) -> None:
            progress.console.print(message, markup=False, highlight=False)

        stats, interrupted = _run_against_broker(
            s,
            run(
                s,
                out_file,
                policies_out,
                on_error=report,
                on_record=lambda n: progress.advance(task, n),
            ),
        )
    if interrupted or stats is None:
        out.print("interrupted: nothing written")
        raise typer.Exit(130)
    partitions = ", ".join(f"{p}: {n:,}" for p, n in sorted(stats.per_partition.items()))
    out.print(
        f"exported {stats.records:,} history records ({len(stats.persons):,} persons, "
        f"{stats.changes:,} stage changes) to {out_file} in {stats.seconds:.1f}s",
        highlight=False,
    )
    out.print(f"per partition: {partitions or 'none'}", highlight=False)
    out.print(f"wrote {stats.policies} policy version(s) to {policies_out}", highlight=False)
    if stats.invalid:
        err.print(f"{stats.invalid} invalid record(s) skipped")
        raise typer.Exit(1)


# --- reconcile ----------------------------------------------------------------------------


class ReportFormat(StrEnum):
    table = "table"
    json = "json"


def reconcile(
    repair: Annotated[
        bool, typer.Option("--repair", help="re-publish every gap to its original partition")
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(help="the worker's consumer group (default: its app id from the prefix)"),
    ] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format")] = ReportFormat.table,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Find inbound events the worker committed but never applied; re-drive them with --repair.

    Reads the group's committed offsets, then history and dead letters, then the events topic
    to its true end. An event below the committed offset that is neither in history (by event
    id) nor dead-lettered is a gap. Exit status: 0 when there is no gap left unrepaired, 1
    otherwise.
    """
    from streams.reconcile import reconcile as run

    s = _settings(broker=broker, topic_prefix=topic_prefix)
    report, interrupted = _run_against_broker(s, run(s, repair=repair, group=group))
    if interrupted or report is None:
        out.print("interrupted")
        raise typer.Exit(130)
    if fmt is ReportFormat.json:
        out.print_json(data=report.to_json())
    else:
        _print_reconcile(report, repair)
    raise typer.Exit(1 if report.unrepaired else 0)


def _print_reconcile(report: Any, repair: bool) -> None:
    from rich.table import Table

    table = Table(title=f"{report.events_topic} vs history (group {report.group})")
    for column in ("partition", "committed", "below", "applied", "dead-lettered", "gaps"):
        table.add_column(column, justify="right")
    table.add_column("pending", justify="right")
    for partition, c in sorted(report.partitions.items()):
        table.add_row(
            str(partition),
            "never" if c.committed is None else f"{c.committed:,}",
            f"{c.below:,}",
            f"{c.applied:,}",
            f"{c.dead_lettered:,}",
            f"[red]{c.gaps:,}[/red]" if c.gaps else "0",
            f"{c.pending:,}",
        )
    out.print(table)
    out.print(
        f"{report.history_records:,} history records, {report.dead_letters:,} dead letters, "
        f"read in {report.seconds:.1f}s",
        highlight=False,
    )
    if not report.gaps:
        out.print("[green]no gaps[/green]: every committed event reached history or dead letters")
        return
    shown = ", ".join(report.gap_ids(10)) + (" …" if len(report.gaps) > 10 else "")
    out.print(f"[red]{len(report.gaps):,} gap(s)[/red]: {shown}", highlight=False)
    if repair:
        out.print(
            f"re-published {report.repaired:,} to their original partitions"
            + (f", {report.repair_failed:,} failed" if report.repair_failed else "")
            + "; the worker applies them as new arrivals",
            highlight=False,
        )
    else:
        out.print("run again with --repair to re-drive them through the worker")


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
    from streams.broker import BrokerStartError, TansuNotInstalled
    from streams.devstack import DevError, DevOptions, DevStack

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
            _, interrupted = _run_until_signal(_dev_session(stack))
        except (DevError, BrokerStartError, TansuNotInstalled) as error:
            raise fail(str(error), 1) from None
        except KeyboardInterrupt:
            interrupted = True
        if interrupted:
            out.print("stopping…")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan a child
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    out.print("worker and broker stopped")


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
    from streams.broker import BrokerStartError, TansuNotInstalled, local_broker

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
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            local.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    out.print("broker stopped")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.add_typer(topics_app, name="topics")
    app.command()(send)
    app.command()(tail)
    app.command("export-history")(export_history)
    app.command()(reconcile)
    app.command()(dev)
    app.command()(broker)
