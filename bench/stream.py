"""End-to-end throughput through the broker: events in → stage changes and history out.

Each measurement starts its own local broker (`--broker-kind kafka`, genuine Apache Kafka, the
default; or `tansu`) and fresh topics, runs the processor in its
own process, warms it up (the consumer is assigned and has processed a few events), then
produces the synthetic stream from this process and times first produce → last history
record observed. Records are counted from fetch responses with manual assignment, so the
count is exact (Tansu's `end_offsets` is not).

  raw     aiokafka consume (getmany) → dict update → produce, sends not awaited: the upper
          bound of the plumbing, no domain rules
  naive   a Faust agent with the real core (decide/evolve), one Table write and one awaited
          send per output: how a first version is usually written
  faust   a Faust agent that forwards each event's bytes to history (no decoding, no rules,
          no table; the worker's producer settings): Faust's own per-event ceiling here
  worker  the real `leadflow worker` with full processing

Then, against the same worker, a fixed rate of 20 % of its measured capacity: every event's
send time is stamped and its stage change timed when it appears (p50 / p99).

Targets (issue 13), each printed with its measured ratio: worker ≥ 0.4× raw (moonshot 0.5×),
p99 event → stage change ≤ 50 ms at 20 % load, worker ≥ 3× naive. The worker's memory is
printed too: its peak RSS (VmHWM of the worker process itself, read before it stops; a child's
`ru_maxrss` would include the bench's RSS at the fork) and bytes per person (RSS after the
timed run minus RSS after warm-up, over the persons the run touched).

    python bench/stream.py [--broker-kind kafka|tansu] [--events 100000] [--persons 10000]
                           [--only raw,naive,faust,worker]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from streams.dev.broker import free_port, local_broker  # noqa: E402
from streams.dev.demo import synthetic_events  # noqa: E402
from streams.dev.process import ChildProcess  # noqa: E402
from streams.kafka.keys import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, generate_master_key  # noqa: E402
from streams.kafka.publish import KeyPartitions, encode_event, publish  # noqa: E402
from streams.kafka.readers import partitions_of  # noqa: E402
from streams.kafka.topics import TopicNames, ensure_topics, topic_specs  # noqa: E402
from streams.settings import Settings  # noqa: E402

OUT = ROOT / "bench" / "out"
Message = tuple[bytes, bytes]


# --- the input --------------------------------------------------------------------------


def stream(persons: int, events: int, *, seed: int, tag: str = "") -> list[dict[str, Any]]:
    """Synthetic events; `tag` renames persons and event ids so streams never share a person."""
    out = []
    for event in synthetic_events(persons, events, seed=seed):
        if tag:
            event["person_id"] = f"{tag}{event['person_id']}"
            event["event_id"] = f"{tag}{event['event_id']}"
        out.append(event)
    return out


# --- counting outputs -------------------------------------------------------------------


class Observer:
    """Counts records per topic from the beginning, with manual assignment (no group)."""

    def __init__(self, settings: Settings, topics: Iterable[str]) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.counts: Counter[str] = Counter()
        self.last_progress = time.monotonic()
        self.on_records: Any = None  # optional callback(topic, records, now)
        # Also count, per topic, records naming an event id with each tag (`topic#tag`):
        # the worker may write records of its own (inactivity ticks) that must not count.
        self.tags: tuple[str, ...] = ("warm-", "run-")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            client_id="bench-observer",
        )
        await consumer.start()
        tps = [
            TopicPartition(t, p)
            for t in self.topics
            for p in sorted(await partitions_of(consumer, t) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run(consumer))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=50, max_records=20_000)
                now = time.monotonic()
                for tp, records in batches.items():
                    self.counts[tp.topic] += len(records)
                    for tag in self.tags:
                        mark = b'"event_id":"' + tag.encode()
                        found = sum(1 for r in records if r.value and mark in r.value)
                        self.counts[f"{tp.topic}#{tag}"] += found
                    if self.on_records is not None:
                        self.on_records(tp.topic, records, now)
                if batches:
                    self.last_progress = now
        finally:
            await consumer.stop()

    async def wait_for(self, topic: str, count: int, *, stall: float = 60.0) -> float:
        """Monotonic time when `topic` reached `count` records; TimeoutError on a stall."""
        while self.counts[topic] < count:
            if time.monotonic() - self.last_progress > stall:
                raise TimeoutError(
                    f"{topic}: {self.counts[topic]} of {count} records, no progress for {stall}s"
                )
            if self._task is not None and self._task.done():
                self._task.result()
            await asyncio.sleep(0.002)
        return time.monotonic()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


# --- processes ----------------------------------------------------------------------------


def proc_status_mb(pid: int | None, name: str) -> float:
    """A `VmRSS` / `VmHWM` line of /proc/<pid>/status in MB (0 once the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return 0.0
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Child(ChildProcess):
    """A processor in its own process group, stopped by PID (`streams.dev.process`)."""

    def __init__(self, command: list[str], log: Path) -> None:
        log.write_bytes(b"")
        super().__init__(command, log, cwd=ROOT)
        self.start()

    def check(self) -> None:
        if self.exited() is not None:
            raise RuntimeError(
                f"{self.log_path.name}: exited with {self.exited()}:\n{self.log_tail()}"
            )


@dataclass
class Result:
    name: str
    events: int
    seconds: float = 0.0
    history: int = 0
    stage_changes: int = 0
    cpu_seconds: float = 0.0
    ready_seconds: float = 0.0
    own_records: int = 0  # history records not from an inbound event (inactivity ticks)
    error: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)
    persons: int = 0  # distinct persons of the timed run
    rss_warm_mb: float = 0.0  # VmRSS after warm-up
    rss_run_mb: float = 0.0  # VmRSS right after the timed run
    peak_rss_mb: float = 0.0  # VmHWM before the processor stops (latency phase included)

    @property
    def bytes_per_person(self) -> float:
        if not (self.persons and self.rss_run_mb and self.rss_warm_mb):
            return 0.0
        return (self.rss_run_mb - self.rss_warm_mb) * 1024 * 1024 / self.persons

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def measure(
    name: str,
    command_for: Any,
    events: list[Message],
    *,
    partitions: int,
    warmup: list[Message],
    stall: float,
    latency: dict[str, Any] | None = None,
    profile: float = 0.0,
    broker_kind: str = "kafka",
) -> Result:
    """One run on a fresh broker: start the processor, warm it up, time the stream.

    With `profile` > 0, py-spy samples the processor for that many seconds of the timed run
    (its own CPU, idle excluded) and the summary is printed and kept in bench/out/.
    """
    OUT.mkdir(parents=True, exist_ok=True)
    result = Result(name, len(events), persons=len({key for key, _ in events}))
    prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    kind_options: dict[str, Any] = {"log_path": OUT / f"{broker_kind}-{name}.log"}
    if broker_kind == "kafka":
        kind_options["data_dir"] = OUT / "data" / f"kafka-{name}-{uuid.uuid4().hex[:6]}"
    with local_broker(broker_kind, **kind_options) as broker:
        settings = Settings(broker=broker.url, topic_prefix=prefix, partitions=partitions)
        names = settings.topics
        await ensure_topics(broker.bootstrap, topic_specs(names, partitions))
        child = Child(command_for(settings), OUT / f"{name}.log")
        observer = Observer(settings, [names.history, names.stage_changes])
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, linger_ms=20, max_batch_size=512 * 1024
        )
        await producer.start()
        try:
            await observer.start()
            started = time.monotonic()
            stats = await publish(settings, warmup, producer=producer)
            assert stats.sent == len(warmup), stats
            while observer.counts[f"{names.history}#warm-"] < len(warmup):
                child.check()
                if time.monotonic() - started > 120:
                    raise TimeoutError(f"{name}: not consuming after 120 s")
                await asyncio.sleep(0.05)
            result.ready_seconds = time.monotonic() - started
            print(f"  {name}: consuming after {result.ready_seconds:.1f}s", flush=True)
            cpu0 = child.cpu_seconds()
            result.rss_warm_mb = proc_status_mb(child.pid, "VmRSS")
            history0 = observer.counts[names.history]
            changes0 = observer.counts[names.stage_changes]
            spy = start_profile(name, child.proc.pid, profile) if profile > 0 else None
            t0 = time.monotonic()
            send = asyncio.create_task(publish(settings, events, producer=producer))
            watch = asyncio.create_task(
                observer.wait_for(f"{names.history}#run-", len(events), stall=stall)
            )
            while not watch.done():
                child.check()
                await asyncio.wait({watch}, timeout=0.5)
            t1 = watch.result()
            await send
            result.seconds = t1 - t0
            result.cpu_seconds = child.cpu_seconds() - cpu0
            result.rss_run_mb = proc_status_mb(child.pid, "VmRSS")
            if spy is not None:
                result.profile = await finish_profile(spy)
            await asyncio.sleep(0.5)  # stage changes of the last events may trail the history
            result.history = observer.counts[names.history] - history0
            result.own_records = result.history - observer.counts[f"{names.history}#run-"]
            result.stage_changes = observer.counts[names.stage_changes] - changes0
            if latency is not None:
                rate = latency["fraction"] * result.rate
                result.latency_ms = await measure_latency(
                    settings, names, observer, rate, latency["seconds"], latency["seed"]
                )
        except Exception as error:  # report and go on with the other benches
            result.error = f"{type(error).__name__}: {error}"
        finally:
            result.peak_rss_mb = proc_status_mb(child.pid, "VmHWM")
            await observer.stop()
            await producer.stop()
            child.stop()
    return result


# --- profile ------------------------------------------------------------------------------

#: Where a sample's time goes, by the first matching frame from the innermost outwards.
BUCKETS = (
    ("gc", ("(garbage collection)",)),
    ("decode (pydantic)", ("events/codec.py", "pydantic")),
    ("decide + evolve (core)", ("lifecycle/",)),
    ("outputs: encode", ("events/outbound.py", "streams/worker/outputs.py")),
    ("state table (rocksdict/faust table)", ("rocksdict", "faust/stores", "faust/tables")),
    ("worker glue (streams/)", ("streams/",)),
    ("producer (aiokafka)", ("aiokafka/producer",)),
    ("consumer/fetch (aiokafka)", ("aiokafka/consumer", "aiokafka/record", "aiokafka/protocol")),
    ("faust stream/consumer machinery", ("faust/",)),
    ("mode/asyncio event loop", ("mode/", "asyncio/", "uvloop", "selectors.py")),
    ("aiokafka other", ("aiokafka/",)),
)


def start_profile(name: str, pid: int, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
    out = OUT / f"{name}-profile.txt"
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--gil",
        "--output",
        str(out),
    ]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return spy, out


async def finish_profile(spy: tuple[subprocess.Popen[bytes], Path]) -> dict[str, float]:
    proc, out = spy
    await asyncio.to_thread(proc.wait)
    if proc.returncode != 0 or not out.exists():
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        print(f"  py-spy failed ({proc.returncode}): {stderr.strip()[:300]}")
        return {}
    buckets: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1].split(" (")[0] + " " + _where(frames[-1])] += n
        for frame in reversed(frames):
            bucket = next((b for b, keys in BUCKETS if any(k in frame for k in keys)), None)
            if bucket is not None:
                buckets[bucket] += n
                break
        else:
            buckets["other"] += n
    if not total:
        return {}
    print(f"  profile ({total:,} samples holding the GIL; by innermost known layer):")
    for bucket, n in buckets.most_common():
        print(f"    {n / total:6.1%}  {bucket}")
    print("  top functions by own time:")
    for function, n in own.most_common(12):
        print(f"    {n / total:6.1%}  {function}")
    print(f"  raw stacks: {out}")
    return {bucket: round(n / total, 4) for bucket, n in buckets.items()}


def _where(frame: str) -> str:
    """`(path:line)` of a py-spy frame shortened to its last two path parts."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    path = inside.rsplit(":", 1)[0]
    return "/".join(Path(path).parts[-2:])


async def measure_latency(
    settings: Settings,
    names: TopicNames,
    observer: Observer,
    rate: float,
    seconds: float,
    seed: int,
) -> dict[str, float]:
    """Produce at `rate`/s for `seconds`; event send time → first stage change it caused."""
    count = max(50, int(rate * seconds))
    events = stream(max(50, count // 8), count, seed=seed, tag="lat-")
    sent_at: dict[str, float] = {}
    seen: dict[str, float] = {}

    def on_records(topic: str, records: list[Any], now: float) -> None:
        if topic != names.stage_changes:
            return
        for record in records:
            event_id = orjson.loads(record.value).get("event_id")
            if event_id in sent_at and event_id not in seen:
                seen[event_id] = now

    observer.on_records = on_records
    # Its own producer with a short linger: the latency is the processor's, not batching's.
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=1)
    await producer.start()
    try:
        return await _paced(names, producer, events, rate, sent_at, seen, observer)
    finally:
        observer.on_records = None
        await producer.stop()


async def _paced(
    names: TopicNames,
    producer: AIOKafkaProducer,
    events: list[dict[str, Any]],
    rate: float,
    sent_at: dict[str, float],
    seen: dict[str, float],
    observer: Observer,
) -> dict[str, float]:
    partition_of = KeyPartitions(await producer.partitions_for(names.events))
    messages = [(event["event_id"], *encode_event(event)) for event in events]
    started = time.monotonic()
    sent = 0
    while sent < len(messages):  # every 2 ms, send what is due by then
        due = min(len(messages), int((time.monotonic() - started) * rate) + 1)
        for event_id, key, value in messages[sent:due]:
            sent_at[event_id] = time.monotonic()
            await producer.send(names.events, value, key=key, partition=partition_of(key))
        sent = max(sent, due)
        await asyncio.sleep(0.002)
    finished = time.monotonic()
    await producer.flush()
    deadline = time.monotonic() + 30
    target = observer.counts[names.history]
    while time.monotonic() < deadline:  # until the history holds every latency event
        await asyncio.sleep(0.2)
        if (
            observer.counts[names.history] == target
            and time.monotonic() - observer.last_progress > 2
        ):
            break
        target = observer.counts[names.history]
    delays = sorted((seen[e] - sent_at[e]) * 1000 for e in seen)
    if not delays:
        return {"rate": rate, "events": len(events), "measured": 0}

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p / 100 * len(delays)))]

    return {
        "rate": rate,
        "events": len(events),
        "measured": len(delays),
        "p50": pct(50),
        "p99": pct(99),
        "max": delays[-1],
        "actual_rate": len(events) / (finished - started),
    }


# --- the processors -------------------------------------------------------------------------

FORWARD = {
    "newsletter_signup": "subscriber",
    "content_download": "lead",
    "webinar_attended": "lead",
    "form_submitted": "lead",
    "demo_requested": "mql",
    "contact_sales": "mql",
    "sales_accepted": "sql",
    "opportunity_opened": "opportunity",
    "deal_won": "customer",
    "sales_rejected": "recycled",
    "deal_lost": "recycled",
}


async def run_raw(settings: Settings) -> None:
    """The upper bound: getmany → orjson → dict update → produce, sends not awaited."""
    names = settings.topics
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, linger_ms=5, max_batch_size=512 * 1024
    )
    await consumer.start()
    await producer.start()
    partitions = await partitions_of(consumer, names.events) or ()
    tps = [TopicPartition(names.events, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    state: dict[bytes, tuple[int, str | None]] = {}
    send = producer.send
    while True:
        batches = await consumer.getmany(timeout_ms=100, max_records=5_000)
        for tp, records in batches.items():
            for r in records:
                event = orjson.loads(r.value)
                sequence, stage = state.get(r.key, (0, None))
                new = FORWARD.get(event["type"], stage)
                changes = []
                if new != stage:
                    change = {
                        "person_id": event["person_id"],
                        "event_id": event["event_id"],
                        "from_stage": stage,
                        "to_stage": new,
                    }
                    changes.append(change)
                    await send(
                        names.stage_changes, orjson.dumps(change), key=r.key, partition=tp.partition
                    )
                state[r.key] = (sequence + 1, new)
                record = {"sequence": sequence + 1, "event": event, "changes": changes}
                await send(names.history, orjson.dumps(record), key=r.key, partition=tp.partition)


def run_naive(settings: Settings, data_dir: Path, session_timeout: float) -> None:
    """A Faust agent as first written: core call, Table write, one awaited send per output."""
    import faust

    from events.codec import decode_event
    from lifecycle.decide import decide
    from lifecycle.evolve import evolve
    from lifecycle.policy import load_preset
    from lifecycle.state import PersonState

    names = settings.topics
    policy = load_preset("default")
    data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}-naive",
        broker=settings.broker,
        store="rocksdb://",
        datadir=str(data_dir),
        topic_partitions=settings.partitions,
        broker_session_timeout=session_timeout,
        web_enabled=False,
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events = app.topic(names.events, **raw)
    history = app.topic(names.history, **raw)
    changes = app.topic(names.stage_changes, **raw)
    persons = app.Table("persons", default=None, key_type=bytes, value_type=bytes)

    @app.agent(events)
    async def process(stream: Any) -> None:
        async for key, value in stream.items():
            event = decode_event(value)
            stored = persons.get(key)
            state = PersonState.from_wire(orjson.loads(stored)) if stored else None
            decision = decide(state, event, policy)
            if not decision.duplicate:
                persons[key] = orjson.dumps(evolve(state, decision).to_wire())
            for change in decision.changes:
                await changes.send(key=key, value=orjson.dumps(change))
            await history.send(key=key, value=orjson.dumps(decision.to_wire()))

    worker = faust.Worker(app, loglevel="warning")
    # Faust's logging setup leaves aiokafka and faust loggers creating DEBUG records (~5 per
    # event); quiet them so the baseline is not charged for logs nobody reads.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)
    worker.execute_from_commandline()


def run_faust_passthrough(settings: Settings, data_dir: Path, session_timeout: float) -> None:
    """Faust's per-event path and nothing else: each event forwarded to history unchanged."""
    import faust

    names = settings.topics
    app = faust.App(
        f"{settings.topic_prefix}-faust",
        broker=settings.broker,
        topic_partitions=settings.partitions,
        broker_session_timeout=session_timeout,
        web_enabled=False,
        producer_linger_ms=20,  # as the worker's producer
        producer_max_batch_size=512 * 1024,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw"}
    events = app.topic(names.events, value_serializer="raw", **raw)
    history = app.topic(names.history, value_serializer="raw", **raw)

    @app.agent(events)
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await history.send(key=event.key, value=event.value, partition=event.message.partition)

    worker = faust.Worker(app, loglevel="warning")
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)
    worker.execute_from_commandline()


def worker_command(settings: Settings, data_dir: Path, session_timeout: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streams.cli",
        "worker",
        "--broker",
        settings.broker,
        "--topic-prefix",
        settings.topic_prefix,
        "--data-dir",
        str(data_dir),
        "--web-port",
        str(free_port()),
        "--session-timeout",
        str(session_timeout),
        "--loglevel",
        "warning",
        # The synthetic stream is months old by the wall clock: a sweep would add inactivity
        # ticks the baselines never see (and stage changes they never publish).
        "--sweep-interval",
        "86400",
    ]


def role_command(
    role: str, settings: Settings, data_dir: Path, session_timeout: float
) -> list[str]:
    profile = os.environ.get("BENCH_PROFILE")  # a file: run the role under cProfile
    return [
        sys.executable,
        *(["-m", "cProfile", "-o", profile] if profile else []),
        str(Path(__file__).resolve()),
        "--role",
        role,
        "--broker",
        settings.broker,
        "--prefix",
        settings.topic_prefix,
        "--partitions",
        str(settings.partitions),
        "--data-dir",
        str(data_dir),
        "--session-timeout",
        str(session_timeout),
    ]


# --- main -------------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(
        f"{args.events:,} events over {args.persons:,} persons, {args.partitions} partitions, "
        f"broker: {args.broker_kind}"
    )
    print(f"{'':8} {'events/s':>10} {'seconds':>8} {'history':>8} {'changes':>8} {'cpu µs/ev':>10}")
    by = {r.name: r for r in results}
    for r in results:
        if r.error:
            print(f"{r.name:8} failed: {r.error.splitlines()[0]}")
            continue
        cpu = r.cpu_seconds / r.events * 1e6 if r.events else 0
        own = f"  (+{r.own_records:,} history records of its own)" if r.own_records else ""
        print(
            f"{r.name:8} {r.rate:>10,.0f} {r.seconds:>8.2f} {r.history:>8,} "
            f"{r.stage_changes:>8,} {cpu:>10.0f}{own}"
        )
    worker, naive = by.get("worker"), by.get("naive")
    both = worker and naive and not (worker.error or naive.error)
    if both and worker.stage_changes != naive.stage_changes:  # same core, same input
        print(
            f"note: worker published {worker.stage_changes:,} stage changes, the naive "
            f"agent {naive.stage_changes:,} (same core and input: expected equal)"
        )
    for line in target_lines(results):
        print(line)
    for r in results:
        lat = r.latency_ms
        if lat.get("measured"):
            target = "  (target p99 ≤ 50 ms)" if r.name == "worker" else ""
            print(
                f"{r.name} latency at {lat['rate']:,.0f} events/s (20 % of its capacity; "
                f"achieved {lat['actual_rate']:,.0f}/s), {lat['measured']:,} stage changes: "
                f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"
                f"{target}"
            )
            if r.name == "worker":
                print(f"  p99 / target: {lat['p99'] / P99_TARGET_MS:.2f} (≤ 1 meets it)")
        elif lat:
            print(f"{r.name} latency: no stage change observed ({lat})")
    for r in results:
        if r.peak_rss_mb and not r.error:
            print(
                f"{r.name} memory: peak RSS {r.peak_rss_mb:,.0f} MB (VmHWM); "
                f"{r.bytes_per_person:,.0f} bytes per person (RSS {r.rss_warm_mb:,.0f} MB after "
                f"warm-up → {r.rss_run_mb:,.0f} MB after the run, {r.persons:,} persons)"
            )


#: Issue 13's targets: worker / baseline ratios (target, moonshot), and p99 at 20 % load.
RATIO_TARGETS = {"raw": (0.4, 0.5), "naive": (3.0, None)}
P99_TARGET_MS = 50.0


def target_lines(results: list[Result]) -> list[str]:
    """`worker / <baseline>: <ratio>x (target …)` for every baseline measured."""
    by = {r.name: r for r in results if not r.error}
    worker = by.get("worker")
    if worker is None or not worker.rate:
        return []
    lines = []
    for other in ("naive", "faust", "raw"):
        base = by.get(other)
        if base is None or not base.rate:
            continue
        target, moonshot = RATIO_TARGETS.get(other, (None, None))
        note = ""
        if target is not None:
            note = f" (target ≥ {target:g}x" + (f", moonshot {moonshot:g}x)" if moonshot else ")")
        lines.append(f"worker / {other}: {worker.rate / base.rate:.2f}x{note}")
    return lines


def targets_json(results: list[Result]) -> dict[str, Any]:
    """The targets with what was measured, for bench/out/."""
    by = {r.name: r for r in results if not r.error}
    worker = by.get("worker")
    out: dict[str, Any] = {}
    if worker is None:
        return out
    for other, (target, moonshot) in RATIO_TARGETS.items():
        base = by.get(other)
        if base is not None and base.rate and worker.rate:
            ratio = worker.rate / base.rate
            out[f"worker/{other}"] = {
                "ratio": round(ratio, 4),
                "target": target,
                "moonshot": moonshot,
                "met": ratio >= target,
            }
    p99 = worker.latency_ms.get("p99")
    if p99 is not None:
        out["p99_ms"] = {"value": p99, "target": P99_TARGET_MS, "met": p99 <= P99_TARGET_MS}
    if worker.peak_rss_mb:
        out["memory"] = {
            "peak_rss_mb": worker.peak_rss_mb,
            "bytes_per_person": round(worker.bytes_per_person),
        }
    return out


async def bench(args: argparse.Namespace) -> list[Result]:
    print(f"generating {args.events:,} events over {args.persons:,} persons…", flush=True)
    events = [encode_event(e) for e in stream(args.persons, args.events, seed=11, tag="run-")]
    warmup = [encode_event(e) for e in stream(50, 200, seed=99, tag="warm-")]
    only = args.only.split(",")
    results = []
    data = OUT / "data"
    data.mkdir(parents=True, exist_ok=True)  # the worker's data dir goes in it (Faust: mkdir)
    for name in ("raw", "naive", "faust", "worker"):
        if name not in only:
            continue
        print(f"{name}…", flush=True)
        store = data / f"{name}-{uuid.uuid4().hex[:6]}"

        def command(settings: Settings, name: str = name, store: Path = store) -> list[str]:
            if name == "worker":
                return worker_command(settings, store, args.session_timeout)
            return role_command(name, settings, store, args.session_timeout)

        latency = None
        if name in args.latency_for.split(",") and args.latency_seconds > 0:
            latency = {"fraction": 0.2, "seconds": args.latency_seconds, "seed": 23}
        result = await measure(
            name,
            command,
            events,
            partitions=args.partitions,
            warmup=warmup,
            stall=args.stall,
            latency=latency,
            profile=args.profile if name in args.profile_for.split(",") else 0.0,
            broker_kind=args.broker_kind,
        )
        results.append(result)
        shutil.rmtree(store, ignore_errors=True)
        status = result.error or f"{result.rate:,.0f} events/s"
        print(f"  {name}: {status}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-kind", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--persons", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--only", default="raw,naive,faust,worker", help="comma-separated benches")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="0 to skip")
    parser.add_argument("--latency-for", default="worker", help="benches timing latency")
    parser.add_argument("--stall", type=float, default=60.0, help="give up after s idle")
    parser.add_argument(
        "--profile", type=float, default=0.0, help="py-spy the processor for N s of the run"
    )
    parser.add_argument("--profile-for", default="worker", help="benches to profile")
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=20.0,
        help="group session of naive and worker: the join (half of it) is paid once, during "
        "warm-up; short sessions risk a rebalance when 2 cores are saturated",
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        settings = Settings(
            broker=args.broker, topic_prefix=args.prefix, partitions=args.partitions
        )
        if args.role == "raw":
            asyncio.run(run_raw(settings))
        elif args.role == "faust":
            run_faust_passthrough(settings, Path(args.data_dir), args.session_timeout)
        else:
            run_naive(settings, Path(args.data_dir), args.session_timeout)
        return
    # The worker seals personal fields with per-person keys wrapped by a master key: a
    # throwaway one for the run unless the environment names one (never printed).
    if not (os.environ.get(MASTER_KEY_ENV) or os.environ.get(MASTER_KEY_FILE_ENV)):
        os.environ[MASTER_KEY_ENV] = generate_master_key("bench")
    results = asyncio.run(bench(args))
    report(results, args)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"stream-{args.broker_kind}-{args.events}-{args.persons}.json"
    rows = [{**asdict(r), "rate": r.rate, "bytes_per_person": r.bytes_per_person} for r in results]
    document = {"args": vars(args), "results": rows, "targets": targets_json(results)}
    path.write_text(json.dumps(document, indent=2))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
