"""A share of the history topic per process, and `leadflow merge-results` to combine them.

`replay | simulate | funnel | verify --broker … --partitions 0-7` read only those partitions
of the history topic, one at a time, and compute one piece per partition
(`lifecycle.partials`); with `--partial-out FILE` they write the pieces as a partial result,
without it they print the report of the share. `merge-results PART...` checks that the
partials are shares of one run (same command, policies, options and topic, no partition
twice, every partition present unless `--allow-partial`) and prints the report one run over
every partition prints: the same rendering code as the commands themselves.

With `--partitions` the history is read as recorded (`follow=False`): a merge's hand-off and
an alias's forwarded events are applied where history has them, on the survivor's
partition, so no share needs another's. Without it, replay, funnel and simulate re-derive
hand-offs under the policy given (`follow=True`); on a history with identity merges the two
can differ (verify reads history as recorded either way).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from events.outbound import HistoryRecord
from lifecycle.partials import (
    Partial,
    PartialError,
    check_set,
    cohort_piece,
    combine_cohorts,
    combine_funnels,
    combine_simulations,
    combine_verifications,
    events_recorded,
    funnel_piece,
    pieces_in_order,
    replay_rows,
    simulate_piece,
    spans,
    verify_piece,
)
from lifecycle.policy import Policy
from lifecycle.replay import Recorded
from streams.cli.common import err, fail, out

PartitionsOpt = Annotated[
    str | None,
    typer.Option(
        "--partitions",
        help="only these partitions of the history topic (0-7, 0,2,5); needs --broker",
    ),
]
PartialOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--partial-out",
        help="write this share's partial result here, for merge-results",
        dir_okay=False,
    ),
]


def parse_partitions(text: str) -> list[int]:
    """`0-7`, `0,2,5`, `0-1,4`: the partition numbers, sorted; ValueError naming the part."""
    numbers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ValueError(f"--partitions {text!r}: {part!r} is not N or N-M") from None
        if first < 0 or last < first:
            raise ValueError(f"--partitions {text!r}: {part!r} is not a range of partitions")
        numbers.update(range(first, last + 1))
    return sorted(numbers)


# --- reading a share ---------------------------------------------------------------------------

#: A partition's history records, streamed, and a way to read them again from its start.
Records = Iterable[HistoryRecord]
Compute = Callable[[Records, Callable[[], Records]], dict[str, Any]]
#: Records parsed per step of the event loop (`streams.tools.export.HISTORY_BATCH`).
READ_BATCH = 2_000


def _share(
    broker: str | None,
    prefix: str,
    spec: str | None,
    given_file: Path | None,
    compute: Compute,
) -> tuple[str, int, dict[int, dict[str, Any]]]:
    """The pieces of the chosen partitions: (topic, its partition count, pieces)."""
    from streams.cli.reading import checked
    from streams.settings import Settings

    if given_file is not None or not broker:
        raise fail("--partitions and --partial-out read the history topic: give --broker, no file")
    try:
        wanted = None if spec is None else parse_partitions(spec)
    except ValueError as error:
        raise fail(str(error)) from None
    settings = Settings(broker=broker, topic_prefix=prefix)
    loop = asyncio.new_event_loop()
    try:
        topic, present, chosen, key_of = loop.run_until_complete(
            checked(settings, _open_share(settings, wanted))
        )
        pieces: dict[int, dict[str, Any]] = {}
        for partition in chosen:  # one partition at a time, streamed
            reader = _PartitionReader(loop, settings, topic, partition, key_of)
            pieces[partition] = {**compute(reader.first(), reader.again), "invalid": reader.invalid}
        return topic, len(present), pieces
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _open_share(
    settings: Any, wanted: list[int] | None
) -> tuple[str, list[int], list[int], Callable[[str], Any]]:
    """(topic, its partitions, those chosen, the opener of sealed fields), or one line."""
    from streams.kafka.keys import opener_of
    from streams.kafka.topics import TopicNotFound
    from streams.tools.export import topic_partitions

    topic = settings.topics.history
    try:
        present = await topic_partitions(settings, topic)
    except TopicNotFound:
        raise fail(f"history topic {topic} not found on {settings.broker}") from None
    chosen = present if wanted is None else wanted
    absent = [p for p in chosen if p not in present]
    if absent:
        raise fail(
            f"--partitions: {spans(absent)} not partitions of {topic} (it has {spans(present)})"
        )
    # Sealed personal fields open with the keys topic and the environment's master key, as
    # for a whole-history run (`streams.tools.export.read_history_topic`); erased persons' stay
    # sealed and their decisions follow the outcomes history recorded (`events_recorded`).
    return topic, present, chosen, await opener_of(settings, _warn)


class _PartitionReader:
    """One partition of the history topic as parsed records, a batch in memory at a time
    (the event loop runs while the caller waits for the next batch), and read again from
    its start on demand (`again`, for the persons a merge touched) up to where the first
    read ended: records written since then are not part of the share. Invalid records are
    collected from the first read as `topic/partition@offset: reason`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Any,
        topic: str,
        partition: int,
        key_of: Callable[[str], Any],
    ) -> None:
        self.loop, self.settings, self.topic = loop, settings, topic
        self.partition, self.key_of = partition, key_of
        self.invalid: list[str] = []
        self.last: int | None = None  # the offset of the last record the first read gave

    def first(self) -> Iterator[HistoryRecord]:
        return self._records(first=True)

    def again(self) -> Iterator[HistoryRecord]:
        return self._records(first=False)

    def _records(self, *, first: bool) -> Iterator[HistoryRecord]:
        batches = self._batches(first)
        try:
            while (batch := self.loop.run_until_complete(anext(batches, None))) is not None:
                yield from batch
        finally:
            if not self.loop.is_closed():  # else the share failed, and the loop with it
                self.loop.run_until_complete(batches.aclose())

    async def _batches(self, first: bool) -> AsyncIterator[list[HistoryRecord]]:
        from streams.kafka.readers import iter_to_end
        from streams.tools.export import parse_history, where

        if not first and self.last is None:
            return  # the first read found nothing
        batch: list[HistoryRecord] = []
        records = iter_to_end(
            self.settings.bootstrap,
            self.topic,
            partitions=[self.partition],
            client_options=self.settings.aiokafka_kwargs(),
        )
        async with aclosing(records):
            async for record in records:
                if first:
                    self.last = record.offset
                elif record.offset > self.last:  # type: ignore[operator]
                    break
                try:
                    batch.append(parse_history(record, self.key_of))
                except ValueError as error:  # reported with the result (`render`, `_finish`)
                    if first:
                        self.invalid.append(f"{where(record)}: {error}")
                    continue
                if len(batch) >= READ_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch


def _warn(text: str) -> None:
    err.print(text, highlight=False, markup=False)


def _finish(partial: Partial, partial_out: Path | None) -> None:
    """Write the partial, or print the share's report."""
    if partial_out is None:
        render([partial], allow_partial=True)
        return
    tmp = partial_out.with_name(partial_out.name + ".tmp")
    try:  # under another name until complete: a failed run leaves no partial that looks whole
        tmp.write_bytes(orjson.dumps(partial.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, partial_out)
    except OSError as error:
        raise fail(f"{partial_out}: {error.strerror or error}") from None
    for number in partial.partitions:
        for line in partial.pieces[number]["invalid"]:
            _warn(line)
    err.print(
        f"wrote {partial_out}: {partial.command} of partitions {spans(partial.partitions)} "
        f"of {partial.topic} ({partial.topic_partitions} partitions)",
        highlight=False,
        markup=False,
    )


# --- the commands' shares (called from streams.cli.offline) ---------------------------------


@dataclass(frozen=True)
class Share:
    """One share of a run: the history topic's broker and prefix, the partitions asked for
    (`--partitions`), where the partial goes (`--partial-out`), and an `--events` file given
    too (refused: a share reads the topic)."""

    broker: str | None
    prefix: str
    spec: str | None
    partial_out: Path | None
    given_file: Path | None

    def run(
        self, command: str, named: list[Policy], options: dict[str, Any], compute: Compute
    ) -> None:
        """Compute the share's pieces, then write the partial or print the share's report."""
        topic, total, pieces = _share(self.broker, self.prefix, self.spec, self.given_file, compute)
        policies = [{"name": p.name, "version": p.version} for p in named]
        _finish(Partial("", command, policies, options, topic, total, pieces), self.partial_out)


def _check_by(by: str | None) -> None:
    from lifecycle.cohorts import GROUPS

    if by is not None and by not in GROUPS:
        raise fail(f"--by is one of {', '.join(GROUPS)}")


def funnel_share(share: Share, policy: Policy, options: dict[str, Any]) -> None:
    _check_by(options["by"])

    def compute(records: Records, again: Callable[[], Records]) -> dict[str, Any]:
        recorded: Recorded = {}
        return funnel_piece(
            events_recorded(records, recorded),
            policy,
            recorded,
            lambda: events_recorded(again(), recorded),
        )

    share.run("funnel", [policy], options, compute)


def cohort_share(share: Share, policy: Policy, period: str, options: dict[str, Any]) -> None:
    from lifecycle.cohorts import PERIODS

    if period not in PERIODS:
        raise fail(f"--cohort is {' or '.join(PERIODS)}")
    _check_by(options["by"])

    def compute(records: Records, again: Callable[[], Records]) -> dict[str, Any]:
        return cohort_piece(records, policy)

    share.run("funnel-cohort", [policy], {**options, "cohort": period}, compute)


def simulate_share(
    share: Share, policy_a: Policy, policy_b: Policy, options: dict[str, Any]
) -> None:
    def compute(records: Records, again: Callable[[], Records]) -> dict[str, Any]:
        recorded: Recorded = {}
        return simulate_piece(
            events_recorded(records, recorded),
            policy_a,
            policy_b,
            recorded,
            lambda: events_recorded(again(), recorded),
        )

    share.run("simulate", [policy_a, policy_b], options, compute)


def verify_share(share: Share, known: dict[str, Policy]) -> None:
    def compute(records: Records, again: Callable[[], Records]) -> dict[str, Any]:
        return verify_piece(records, known)

    share.run("verify", [known[v] for v in sorted(known)], {}, compute)


def replay_share(
    share: Share, policy: Policy, cutoff: datetime | None, options: dict[str, Any]
) -> None:
    def compute(records: Records, again: Callable[[], Records]) -> dict[str, Any]:
        conflicts: list[list[str]] = []
        recorded: Recorded = {}
        rows = replay_rows(
            events_recorded(records, recorded),
            policy,
            person=options["person"],
            cutoff=cutoff,
            state=options["state"],
            conflicts=conflicts,
            recorded=recorded,
        )
        return {"lines": [orjson.dumps(row).decode() for row in rows], "conflicts": conflicts}

    share.run("replay", [policy], options, compute)


# --- combining ---------------------------------------------------------------------------------


def _conflict_lines(piece: dict[str, Any]) -> None:
    for person, conflict in piece["conflicts"]:
        _warn(f"conflict: person {person}: {conflict}; not applied")


def _conflicts_summary(count: int) -> None:
    if count:
        err.print(f"{count} event(s) reusing an event id with other content skipped")


def render(partials: list[Partial], *, allow_partial: bool = False) -> None:
    """Print the report of the partials combined, as the command prints it."""
    try:
        missing = check_set(partials, allow_partial=allow_partial)
    except PartialError as error:
        raise fail(str(error)) from None
    first = partials[0]
    pieces = pieces_in_order(partials)
    if missing:
        covered = spans(p for partial in partials for p in partial.partitions)
        err.print(
            f"partitions {spans(missing)} of {first.topic} left out: this report covers "
            f"partitions {covered} only",
            highlight=False,
        )
    for piece in pieces:
        for line in piece["invalid"]:
            _warn(line)
    try:
        _RENDER[first.command](first, pieces)
    except PartialError as error:
        raise fail(f"{', '.join(p.source for p in partials)}: {error}") from None


def _render_funnel(first: Partial, pieces: list[dict[str, Any]]) -> None:
    from streams.cli import analytics as commands_analytics
    from streams.cli.offline import print_funnel

    for piece in pieces:
        _conflict_lines(piece)
    report = combine_funnels(p["funnel"] for p in pieces).report()
    policy, by, format = first.policies[0], first.options["by"], first.options["format"]
    if by is not None:
        commands_analytics.attribution(report, by, format)
    elif format == "json":
        out.print_json(data={"policy_version": policy["version"], **report.to_dict()})
    else:
        print_funnel(report, f"policy {policy['name']} ({policy['version']})")
    _conflicts_summary(sum(len(p["conflicts"]) for p in pieces))


def _render_cohorts(first: Partial, pieces: list[dict[str, Any]]) -> None:
    from streams.cli.analytics import print_cohorts

    options, policy = first.options, first.policies[0]
    reported, restated = combine_cohorts(pieces, options["cohort"], options["by"])
    print_cohorts(reported, restated, policy["name"], policy["version"], options["format"])


def _render_simulate(first: Partial, pieces: list[dict[str, Any]]) -> None:
    from streams.cli.offline import print_simulation

    a, b = first.policies
    result = combine_simulations(pieces, a["version"], b["version"])
    print_simulation(result, a["name"], b["name"], first.options["limit"], first.options["format"])


def _render_verify(first: Partial, pieces: list[dict[str, Any]]) -> None:
    from streams.cli.offline import print_verification

    report = combine_verifications(pieces)
    print_verification(report)
    if not report.ok:
        raise typer.Exit(1)


def _render_replay(first: Partial, pieces: list[dict[str, Any]]) -> None:
    write = sys.stdout.buffer.write
    for piece in pieces:
        _conflict_lines(piece)
        for line in piece["lines"]:
            write(line.encode())
            write(b"\n")
    sys.stdout.buffer.flush()
    _conflicts_summary(sum(len(p["conflicts"]) for p in pieces))


_RENDER: dict[str, Callable[[Partial, list[dict[str, Any]]], None]] = {
    "funnel": _render_funnel,
    "simulate": _render_simulate,
    "verify": _render_verify,
    "replay": _render_replay,
    "funnel-cohort": _render_cohorts,
}


def read_partial(path: Path) -> Partial:
    """A partial result file; one line naming the file (and line) if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise fail(f"{path}: {error.strerror or error}") from None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # the stdlib parser says where: line and column
            document = json.loads(data)
        except json.JSONDecodeError as error:
            raise fail(f"{path}:{error.lineno}:{error.colno}: not JSON: {error.msg}") from None
        except ValueError as error:
            raise fail(f"{path}: not JSON: {error}") from None
    try:
        return Partial.from_json(document, str(path))
    except PartialError as error:
        raise fail(str(error)) from None


def merge_results(
    parts: Annotated[
        list[Path],
        typer.Argument(help="partial results (--partial-out) of one run", dir_okay=False),
    ],
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="print the report of the partitions given"),
    ] = False,
) -> None:
    """Combine partial results (`--partitions … --partial-out`) into the one report a single
    run over every partition prints."""
    render([read_partial(path) for path in parts], allow_partial=allow_partial)


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("merge-results")(merge_results)
