"""Following a leadflow topic in readable form (`leadflow tail`).

Partitions are assigned by hand: no consumer group, nothing committed, and no group join
(which takes half a session timeout on the dev broker). "From now" starts at the true end of
each partition, the high watermark of the first fetch response: `seek_to_end` alone lands
inside the last batch on the dev broker and would replay a few old records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from rich.markup import escape

from events.inbound import Event
from events.outbound import DeadLetter, HistoryRecord, StageChanged
from streams.kafka.readers import assigned_reader, partitions_of
from streams.kafka.topics import TopicNames, TopicNotFound
from streams.settings import Settings
from streams.tools.export import parse_value

#: `--topic` values and the TopicNames field each one names.
TOPICS = {
    "stage-changes": "stage_changes",
    "history": "history",
    "dead-letters": "dead_letters",
    "events": "events",
    "policies": "policies",
}

Record = ConsumerRecord[bytes, bytes]


def topic_name(names: TopicNames, which: str) -> str:
    return str(getattr(names, TOPICS[which]))


def _time(value: datetime | None) -> str:
    if value is None:
        return "-" * 19
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _stage(value: str | None) -> str:
    return value or "(new)"


def _record_time(record: Record) -> datetime:
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)


def show_stage_change(record: Record) -> str:
    c: StageChanged = parse_value(StageChanged, record.value)
    via = f" [dim](via {', '.join(c.passed_through)})[/dim]" if c.passed_through else ""
    extra = [
        f"source {c.lead_source}" if c.lead_source else "",
        c.temperature or "",
    ]
    tail = "  ".join(x for x in extra if x)
    return (
        f"{_time(c.occurred_at)}  [bold]{escape(c.person_id)}[/bold]  "
        f"{_stage(c.from_stage)} → [bold green]{c.to_stage}[/bold green]{via}  "
        f"[cyan]{escape(c.reason.rule)}[/cyan]: {escape(c.reason.text)}"
        + (f"  [dim]{escape(tail)}[/dim]" if tail else "")
    )


def show_history(record: Record) -> str:
    h: HistoryRecord = parse_value(HistoryRecord, record.value)
    e = h.event
    if h.changes:
        moves = ", ".join(f"{_stage(c.from_stage)} → {c.to_stage}" for c in h.changes)
        what = f"[bold green]{moves}[/bold green]"
    elif h.note is not None:
        what = f"[dim]{escape(h.note.text)}[/dim]"
    else:
        what = "[dim]no change[/dim]"
    return (
        f"{_time(e.occurred_at)}  [bold]{escape(h.person_id)}[/bold] #{h.sequence}  "
        f"{escape(e.type)} ({escape(e.event_id)})  {what}"
    )


def show_dead_letter(record: Record) -> str:
    d: DeadLetter = parse_value(DeadLetter, record.value)
    if d.sealed:  # personal data possibly: sealed for the person the key names
        preview = "(value sealed for the person)" if d.value else "(value not kept: erased)"
    elif d.value_sha256 is not None:  # no person key: the original is where it came from
        preview = f"(value not kept: no person key; sha256 {d.value_sha256[:12]}…)"
    else:
        preview = d.value[:120].decode(errors="replace").replace("\n", " ")
    return (
        f"{_time(_record_time(record))}  [red]{escape(d.error)}[/red]  "
        f"from {escape(d.topic)}/{d.partition}@{d.offset}  [dim]{escape(preview)}[/dim]"
    )


def show_event(record: Record) -> str:
    e: Event = parse_value(Event, record.value)
    source = f"  source {escape(e.source)}" if e.source else ""
    reason = f"  [dim]{escape(e.reason)}[/dim]" if e.reason else ""
    return (
        f"{_time(e.occurred_at)}  [bold]{escape(e.person_id)}[/bold]  {escape(e.type)}"
        f"{source}{reason}  [dim]{escape(e.event_id)}[/dim]"
    )


def show_policy(record: Record) -> str:
    from streams.tools.export import parse_policy

    p = parse_policy(record)
    return (
        f"{_time(_record_time(record))}  policy [bold]{escape(p.name)}[/bold] "
        f"version {p.version}  [dim]{escape(p.description[:80])}[/dim]"
    )


SHOW: dict[str, Callable[[Record], str]] = {
    "stage-changes": show_stage_change,
    "history": show_history,
    "dead-letters": show_dead_letter,
    "events": show_event,
    "policies": show_policy,
}


def render(which: str, record: Record) -> str:
    """One rich-markup line for a record; an unreadable record says where it is and why."""
    try:
        return SHOW[which](record)
    except ValueError as error:
        return (
            f"[yellow]{record.topic}/{record.partition}@{record.offset}: "
            f"unreadable: {escape(str(error))}[/yellow]"
        )


def as_json(record: Record) -> str:
    """The value as one line of JSON (re-serialised only if it spans lines or is not JSON)."""
    raw = record.value or b"null"
    if b"\n" not in raw:
        try:
            orjson.loads(raw)
            return raw.decode(errors="replace")
        except orjson.JSONDecodeError:
            pass
        return orjson.dumps({"unreadable": raw.decode(errors="replace")}).decode()
    return orjson.dumps(orjson.loads(raw)).decode()


async def _true_ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[Any, int]:
    """High watermark of each partition from real fetch responses (see module doc)."""
    await consumer.seek_to_end(*tps)  # cheap start; may land inside the last batch
    ends: dict[Any, int] = {}
    deadline = time.monotonic() + 30
    while len(ends) < len(tps):
        await consumer.getmany(timeout_ms=100)
        for tp in tps:
            hw = consumer.highwater(tp)
            if hw is not None:
                ends[tp] = hw
        if time.monotonic() > deadline:
            missing = [tp.partition for tp in tps if tp not in ends]
            raise TimeoutError(f"no fetch response for partitions {missing} within 30 s")
    return ends


async def follow(
    settings: Settings,
    which: str,
    emit: Callable[[Record], None],
    *,
    from_beginning: bool = False,
    limit: int | None = None,
    idle_timeout: float | None = None,
) -> int:
    """Call `emit` for each record of the chosen topic until `limit` or `idle_timeout`.

    Follows forever otherwise; cancel the task (Ctrl-C) to stop. Returns the number emitted.
    """
    topic = topic_name(settings.topics, which)
    consumer = assigned_reader(
        settings.aiokafka_kwargs(), client_id="leadflow-tail", fetch_max_wait_ms=200
    )
    await consumer.start()
    emitted = 0
    try:
        partitions = await partitions_of(consumer, topic)
        if not partitions:
            raise TopicNotFound(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            for tp, end in (await _true_ends(consumer, tps)).items():
                consumer.seek(tp, end)
        last = time.monotonic()
        while limit is None or emitted < limit:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            records = sorted(
                (r for rs in batches.values() for r in rs), key=lambda r: (r.timestamp, r.offset)
            )
            for record in records:
                emit(record)
                emitted += 1
                if limit is not None and emitted >= limit:
                    break
            now = time.monotonic()
            if records:
                last = now
            elif idle_timeout is not None and now - last > idle_timeout:
                break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return emitted
