"""`leadflow dev`: the whole system on one machine with one command and no Docker.

Starts a local broker (Tansu by default, genuine Apache Kafka with `--broker-kind kafka`, its
data under the data dir), creates the topics, runs a worker as a child process, optionally
publishes a synthetic demo stream, and shows a live count of what the worker decided. Both
children are stopped by PID on Ctrl-C or SIGTERM, worker first (it still needs the broker to
leave cleanly), and are tied to this process with PR_SET_PDEATHSIG so a `kill -9` of `dev`
does not leave them behind either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from lifecycle.stages import STAGES
from streams.dev.broker import local_broker
from streams.dev.process import ChildProcess
from streams.kafka.readers import assigned_reader, partitions_of
from streams.kafka.topics import ensure_topics, topic_specs
from streams.settings import Settings
from streams.web.access import READ, token_hash

#: Written into a data dir `dev` created, so it only ever wipes a directory of its own.
MARKER = ".leadflow-dev"


class DevError(RuntimeError):
    """Something the user can fix (a busy port, a foreign data dir, a worker that died)."""


@dataclass(slots=True)
class DevOptions:
    port: int | None = None
    web_port: int = 6066
    demo: bool = True
    persons: int = 3_000
    events: int = 30_000
    rate: float = 0.0
    topic_prefix: str = ""
    partitions: int = 4
    data_dir: Path = Path("data/dev")
    session_timeout: float = 6.0
    policy: Path | None = None
    preset: str | None = None
    ready_timeout: float = 90.0
    broker_kind: str = "tansu"


@dataclass(slots=True)
class Counts:
    """What the worker has produced so far, counted from its output topics."""

    history: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0

    def line(self) -> str:
        stages = ", ".join(f"{s}={self.changes[s]}" for s in STAGES if self.changes[s])
        return (
            f"history records: {self.history}  stage changes: {sum(self.changes.values())}"
            f" ({stages or 'none yet'})  dead letters: {self.dead_letters}"
        )

    def table(self, published: int) -> Table:
        table = Table(title="leadflow dev — live", title_justify="left")
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("events published", f"{published:,}")
        table.add_row("history records (events applied)", f"{self.history:,}")
        for stage in STAGES:
            table.add_row(f"  → {stage}", f"{self.changes[stage]:,}")
        table.add_row("dead letters", f"{self.dead_letters:,}")
        return table


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def prepare_data_dir(path: Path) -> None:
    """Start from an empty data dir: the demo is published again at every start, and the
    worker's local state from a previous run would describe records Tansu no longer has.
    (A Kafka broker's data lives here too, so it starts empty as well; `leadflow broker`
    keeps a broker's data across starts.)"""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise DevError(
                f"{path} is not empty and was not created by `leadflow dev`; "
                "pass an empty or new --data-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("created by `leadflow dev`; wiped at every start\n")


def worker_command(settings: Settings, options: DevOptions) -> list[str]:
    """`leadflow worker …` run with this interpreter, so it uses the same environment."""
    command = [
        sys.executable,
        "-m",
        "streams.cli",
        "worker",
        "--broker",
        settings.broker,
        "--topic-prefix",
        settings.topic_prefix,
        "--data-dir",
        str(options.data_dir / "worker"),
        "--web-port",
        str(options.web_port),
        "--session-timeout",
        str(options.session_timeout),
    ]
    if options.policy is not None:
        command += ["--policy", str(options.policy)]
    elif options.preset is not None:
        command += ["--preset", options.preset]
    return command


def _health(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(HTTP status, parsed JSON body or None); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError):
        return 0, None
    try:
        return status, orjson.loads(body)
    except orjson.JSONDecodeError:
        return status, None


def is_consuming(status: int, body: Any) -> bool:
    """Healthy, and (when the worker reports them) owning at least one events partition."""
    if status != 200:
        return False
    if isinstance(body, dict) and "partitions" in body:
        return bool(body["partitions"])
    return True


class DevStack:
    """Broker + topics + worker (+ demo stream), and the live summary."""

    def __init__(self, options: DevOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.broker = local_broker(
            options.broker_kind,
            options.port,
            log_path=options.data_dir / "broker.log",
            **({"data_dir": options.data_dir / "kafka"} if options.broker_kind == "kafka" else {}),
        )
        self.worker: ChildProcess | None = None
        self.settings: Settings | None = None
        self.counts = Counts()
        self.published = 0
        # The API token: the user's, or a random one for this session only, so a newcomer
        # sees persons at once (a production worker without a token serves no personal data).
        configured = os.environ.get("LEADFLOW_API_TOKEN")
        self.token_generated = not configured
        self.token = configured or secrets.token_urlsafe(18)
        # The dashboard link signs in with its own token, scoped `read`: all it needs.
        self.dashboard_token = secrets.token_urlsafe(18)

    # -- start --------------------------------------------------------------------------------
    def start(self) -> Settings:
        """Start the broker and the worker process; return the settings clients should use."""
        o = self.options
        if not port_is_free(o.web_port):
            raise DevError(f"port {o.web_port} is in use; pick another with --web-port")
        # Tansu binds with SO_REUSEPORT: on a busy port it starts anyway and shares the
        # connections with whatever listens there, so check before starting it.
        if o.port is not None and not port_is_free(o.port):
            raise DevError(f"port {o.port} is in use; pick another with --port or leave it out")
        prepare_data_dir(o.data_dir)
        self.broker.start()
        self.settings = Settings(
            broker=self.broker.url, topic_prefix=o.topic_prefix, partitions=o.partitions
        )
        return self.settings

    async def create_topics(self) -> tuple[str, ...]:
        assert self.settings is not None
        s = self.settings
        result = await ensure_topics(
            self.broker.bootstrap,
            topic_specs(s.topics, s.partitions),
            client_options=s.aiokafka_kwargs(),  # as every client: no auto-creation
        )
        return result.created + result.existing

    def start_worker(self, command: list[str] | None = None) -> ChildProcess:
        assert self.settings is not None
        command = command or worker_command(self.settings, self.options)
        dashboard = f"dashboard:{READ}:{token_hash(self.dashboard_token)}"
        tokens = ";".join(t for t in (os.environ.get("LEADFLOW_API_TOKENS"), dashboard) if t)
        env = {
            "LEADFLOW_API_TOKEN": self.token,
            "LEADFLOW_API_TOKENS": tokens,
            **self.master_key_env(),
        }
        self.worker = ChildProcess(
            command, self.options.data_dir / "worker.log", env=env, die_with_parent=True
        )
        self.worker.start()
        return self.worker

    def master_key_env(self) -> dict[str, str]:
        """The user's master key, else one kept in the data dir (dev data only: personal
        fields are sealed with per-person keys it wraps, as in production)."""
        from streams.kafka.keys import MASTER_KEY_FILE_ENV, generate_master_key

        if not self.master_key_generated:
            return {}
        path = self.master_key_path
        if not path.exists():  # owner-only from the first byte (never printed or logged)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_master_key("dev") + "\n")
        return {MASTER_KEY_FILE_ENV: str(path)}

    @property
    def master_key_generated(self) -> bool:
        """Whether the worker gets a dev master key (the environment names none)."""
        from streams.kafka.keys import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV

        return not (os.environ.get(MASTER_KEY_ENV) or os.environ.get(MASTER_KEY_FILE_ENV))

    @property
    def master_key_path(self) -> Path:
        """Where the dev master key is kept when the environment names none."""
        return self.options.data_dir / "master.key"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.options.web_port}"

    @property
    def dashboard_link(self) -> str:
        """The dashboard, signed in with its read-only token (the page takes it from the
        fragment, which browsers never send to the server, and removes it from the address
        bar)."""
        return f"{self.web_url}/#token={urllib.parse.quote(self.dashboard_token)}"

    async def wait_for_worker(self) -> float:
        """Seconds until the worker is consuming (its /healthz lists partitions it owns).

        DevError if it exits or never gets there.
        """
        assert self.worker is not None
        started = time.monotonic()
        deadline = started + self.options.ready_timeout
        url = f"{self.web_url}/healthz"
        while time.monotonic() < deadline:
            code = self.worker.exited()
            if code is not None:
                raise DevError(
                    f"the worker exited with code {code} during startup; "
                    f"log {self.worker.log_path}:\n{self.worker.log_tail()}"
                )
            if is_consuming(*await asyncio.to_thread(_health, url)):
                return time.monotonic() - started
            await asyncio.sleep(0.25)
        raise DevError(
            f"the worker was not consuming ({url}) within {self.options.ready_timeout:.0f}s; "
            f"log {self.worker.log_path}:\n{self.worker.log_tail()}"
        )

    # -- demo ---------------------------------------------------------------------------------
    async def publish_demo(self) -> int:
        from streams.dev.demo import DEMO_WIN_RATES, synthetic_events
        from streams.kafka.publish import encode_event, publish

        assert self.settings is not None
        o = self.options
        # The stream ends now, so the dashboard's dates and the sweeper's clock agree with it.
        now = datetime.now(UTC)
        events = synthetic_events(
            o.persons, o.events, seed=7, duplicates=0.002, end=now, win_rates=DEMO_WIN_RATES
        )

        def sent(n: int) -> None:
            self.published += n

        stats = await publish(
            self.settings, (encode_event(e) for e in events), on_sent=sent, rate=o.rate
        )
        return stats.sent

    # -- live counts --------------------------------------------------------------------------
    async def count_outputs(self) -> None:
        """Count history records, stage changes by stage and dead letters, forever."""
        assert self.settings is not None
        names = self.settings.topics
        consumer = assigned_reader(
            self.settings.aiokafka_kwargs(), client_id="leadflow-dev-summary", fetch_max_wait_ms=250
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in (names.history, names.stage_changes, names.dead_letters)
                for p in sorted(await partitions_of(consumer, topic) or ())
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, records in batches.items():
                    if tp.topic == names.history:
                        self.counts.history += len(records)
                    elif tp.topic == names.dead_letters:
                        self.counts.dead_letters += len(records)
                    else:
                        for record in records:
                            with contextlib.suppress(Exception):
                                stage = orjson.loads(record.value or b"{}").get("to_stage")
                                self.counts.changes[str(stage)] += 1
        finally:
            await consumer.stop()

    async def watch(self, interval: float = 5.0) -> None:
        """Show the counts until cancelled: a live table on a terminal, a line otherwise."""
        assert self.worker is not None
        counter = asyncio.create_task(self.count_outputs())
        try:
            if self.console.is_terminal:
                with Live(
                    self.counts.table(self.published), console=self.console, refresh_per_second=2
                ) as live:
                    while True:
                        self._check_worker(counter)
                        live.update(self.counts.table(self.published))
                        await asyncio.sleep(0.5)
            last = ""
            while True:
                self._check_worker(counter)
                line = self.counts.line()
                if line != last:
                    self.console.print(line, highlight=False)
                    last = line
                await asyncio.sleep(interval)
        finally:
            counter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await counter

    def _check_worker(self, counter: asyncio.Task[None]) -> None:
        assert self.worker is not None
        code = self.worker.exited()
        if code is not None:
            raise DevError(
                f"the worker exited with code {code}; log {self.worker.log_path}:\n"
                f"{self.worker.log_tail()}"
            )
        if counter.done() and not counter.cancelled() and counter.exception():
            raise DevError(f"counting the worker's output failed: {counter.exception()!r}")

    # -- stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Worker first (it leaves its group through the broker), then the broker."""
        if self.worker is not None:
            self.worker.stop()
        self.broker.stop()
