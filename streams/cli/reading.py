"""Where the offline commands get their input: the policy named by `--policy`/`--preset`, the
events of a JSONL or CSV file (with a mapping) or of the history topic, the one-line report
of bad lines, the broker preflight, and JSONL output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from events.inbound import Event
from lifecycle.policy import PRESETS, Policy, PolicyError, load_policy, load_preset, resolve_policy
from lifecycle.replay import Recorded
from streams.cli.common import (
    err,
)
from streams.cli.common import fail as _fail
from streams.cli.imports import warn_unknown_types
from streams.tools.files import BadLine, ReadStats, read_events, read_history


def policy_of(path: Path | None, preset: str | None) -> Policy:
    try:
        return resolve_policy(path, preset)
    except PolicyError as error:
        raise _fail(str(error)) from None


def named_policy(value: str) -> Policy:
    """A policy given as a file path or a preset name."""
    try:
        if Path(value).is_file():
            return load_policy(value)
        if value in PRESETS:
            return load_preset(value)
    except PolicyError as error:
        raise _fail(str(error)) from None
    raise _fail(f"{value}: no such policy file, and not a preset ({', '.join(PRESETS)})")


class EventReader:
    """Events from a file or the history topic, reporting bad lines as FILE:LINE: reason."""

    def __init__(self, strict: bool, mapping: Path | None = None) -> None:
        self.stats = ReadStats()
        self.strict = strict
        self.mapping = mapping
        self.conflicts = 0
        #: outcomes history kept of personal fields, for persons whose fields are unreadable
        self.recorded: Recorded = {}

    def repeats(self, paths: list[Path] | None, broker: str | None) -> set[str] | None:
        """The event ids that may occur more than once in the input, when it is one JSONL
        file known whole (`streams.tools.repeats`: the others skip the dedup index of a
        replay); None for a topic, a CSV or a mapping, or a stream such as standard input."""
        path = one_file(paths, self.mapping)
        if broker or self.mapping is not None or path is None:
            return None
        if path.suffix.lower() == ".csv" or not path.is_file():
            return None
        from streams.tools.repeats import may_repeat

        return may_repeat(path)

    def report(self, error: BadLine) -> None:
        err.print(str(error), highlight=False, markup=False)

    def check(self, decision: Any) -> Any:
        """Report an event id reused with other content (the worker dead-letters it)."""
        if decision.conflict is not None:
            self.conflicts += 1
            err.print(
                f"conflict: person {decision.person_id}: {decision.conflict}; not applied",
                highlight=False,
                markup=False,
            )
        return decision

    def events(self, paths: list[Path] | None, broker: str | None, prefix: str) -> Iterator[Event]:
        if broker and self.mapping:
            raise _fail("--mapping reads a CSV file given with --events, not a topic")
        if broker:
            from streams.tools.export import parse_history_event

            for record in history_from_broker(broker, prefix, parse_history_event):
                if record.outcomes:
                    key = (record.person_id, record.event.event_id)
                    self.recorded[key] = (record.policy_version, record.outcomes)
                yield record.event
            return
        path = one_file(paths, self.mapping)
        if path is None:
            raise _fail("give --events FILE or --broker URL")
        for each in paths or ():
            if not each.exists():
                raise _fail(f"{each}: no such file")
        if self.mapping is not None:
            yield from self._mapped(paths or [], self.mapping)
            return
        try:
            yield from read_events(
                path,
                stats=self.stats,
                on_error=self.report,
                strict=self.strict,
                progress=True,
                recorded=self.recorded,
            )
        except BadLine as error:
            raise _fail(str(error), 1) from None

    def _mapped(self, paths: list[Path], mapping: Path) -> Iterator[Event]:
        from streams.tools.mapping import ImportStats, MappingError, load_mapping, read_mapped

        self.stats = stats = ImportStats()
        try:
            rules = load_mapping(mapping)
            warn_unknown_types(rules, mapping)
            yield from read_mapped(
                paths, rules, stats=stats, on_error=self.report, strict=self.strict, progress=True
            )
        except MappingError as error:
            raise _fail(str(error)) from None
        except BadLine as error:
            raise _fail(str(error), 1) from None

    def history(self, path: Path | None, broker: str | None, prefix: str) -> Iterator[Any]:
        if broker:
            yield from history_from_broker(broker, prefix)
            return
        if path is None:
            raise _fail("give --history FILE or --broker URL")
        if not path.exists():
            raise _fail(f"{path}: no such file")
        try:
            yield from read_history(
                path, stats=self.stats, on_error=self.report, strict=self.strict, progress=True
            )
        except BadLine as error:
            raise _fail(str(error), 1) from None

    def summary(self) -> None:
        if self.stats.bad:
            err.print(f"{self.stats.bad} bad line(s) skipped of {self.stats.lines}")
        if self.conflicts:
            err.print(f"{self.conflicts} event(s) reusing an event id with other content skipped")


def one_file(paths: list[Path] | None, mapping: Path | None) -> Path | None:
    """The --events file (the first of several CSV exports, which only a mapping reads
    together, in the order given, as `leadflow import` does); None if none is given."""
    if not paths:
        return None
    if len(paths) > 1 and mapping is None:
        raise _fail(
            f"{len(paths)} --events files: several are read together only as CSV exports "
            "with --mapping; give one JSONL file (join them with cat)"
        )
    return paths[0]


def history_from_broker(
    broker: str,
    prefix: str,
    parse: Any = None,
    *,
    partitions: Collection[int] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """Every history record on the broker in (partition, offset) order, streamed: a batch
    is read while the caller waits for it (`streams.tools.export.history_batches`), so a
    replay holds one batch of records, not the topic. `parse`, `partitions`, `on_error`: see
    `history_batches`."""
    from streams.kafka.topics import TopicNotFound
    from streams.settings import Settings
    from streams.tools.export import history_batches, parse_history

    settings = Settings(broker=broker, topic_prefix=prefix)
    batches = history_batches(
        settings, parse=parse or parse_history, partitions=partitions, on_error=on_error
    )
    loop = asyncio.new_event_loop()
    try:
        try:  # the broker preflight and the keys, then the first batch
            batch = loop.run_until_complete(checked(settings, anext(batches, None)))
        except TopicNotFound:
            topic = settings.topics.history
            raise _fail(f"history topic {topic} not found on {broker}") from None
        while batch is not None:
            yield from batch
            batch = loop.run_until_complete(anext(batches, None))
    finally:
        loop.run_until_complete(batches.aclose())
        loop.close()


async def checked(settings: Any, main: Any) -> Any:
    """`main`, once one connection with the settings' security works (else one line)."""
    from streams.kafka.preflight import BrokerAccessError, check_broker

    try:
        await check_broker(settings)
    except BrokerAccessError as error:
        main.close()
        raise _fail(str(error), 1) from None
    from streams.kafka.keys import MasterKeyError

    try:
        return await main
    except MasterKeyError as error:  # a malformed LEADFLOW_MASTER_KEY: one line, no key in it
        raise _fail(str(error), 2) from None


def write_rows(rows: Iterable[Any]) -> int:
    write = sys.stdout.buffer.write
    count = 0
    for row in rows:
        write(orjson.dumps(row))
        write(b"\n")
        count += 1
    sys.stdout.buffer.flush()
    return count


def parse_as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(
            f"--as-of {value!r}: not an ISO 8601 time (e.g. 2026-03-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise _fail(f"--as-of {value!r}: give a time zone (e.g. Z or +01:00)")
    return moment
