"""`leadflow keys …`: master keys and the per-person data keys on the keys topic.

* `keys new-master` prints a new master key entry (`kid:base64`) for `LEADFLOW_MASTER_KEY`.
* `keys rewrap` rewraps every data key that an old master key wraps under the current one
  (the first in `LEADFLOW_MASTER_KEY`), so the old master key can be retired. Workers also
  rewrap the keys of the partitions they take over; this command does the whole topic.
  Run it with the workers stopped: a key it rewrote just after a worker's erasure tombstone
  would come back (the owning worker would destroy it again at its next assignment, since it
  completes every erasure whose key is still there, but not before). Transit keys (an
  alias's forwarded events) are not rewrapped: the alias's worker publishes its transit key
  again, under the current master key, at its first forward after a restart.
* `keys seal-history` seals a history written before crypto-shredding (plaintext personal
  fields) in place: copied sealed to a staging topic, then swapped in
  (`streams.tools.seal_history`). It refuses to run while a worker is in the group.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from streams.kafka.keys import (
    TRANSIT_PREFIX,
    MasterKeyError,
    MasterKeys,
    generate_master_key,
    read_keys,
)

if TYPE_CHECKING:
    from streams.settings import Settings

out = Console()
err = Console(stderr=True)
keys_app = typer.Typer(no_args_is_help=True, help="Master keys and per-person data keys.")


def _settings(broker: str | None, topic_prefix: str) -> tuple[Settings, MasterKeys]:
    """The settings and master keys of a command; a missing master key is one error line."""
    from streams.settings import Settings

    settings = Settings(**({"broker": broker} if broker else {}), topic_prefix=topic_prefix)
    try:
        return settings, settings.master_keys() or MasterKeys.required({})
    except MasterKeyError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None


@keys_app.command("new-master")
def new_master(
    kid: Annotated[str | None, typer.Option(help="key id (default: random)")] = None,
) -> None:
    """Print a new master key entry; put it first in LEADFLOW_MASTER_KEY, keep the old ones."""
    print(generate_master_key(kid))


@keys_app.command("rewrap")
def rewrap(
    broker: Annotated[str | None, typer.Option(help="kafka://host:port")] = None,
    topic_prefix: Annotated[str, typer.Option(help="topic name prefix")] = "",
) -> None:
    """Rewrap every data key under the current master key (after a rotation)."""
    settings, master = _settings(broker, topic_prefix)
    try:
        rewrapped, total = asyncio.run(_rewrap(settings, master))
    except MasterKeyError as error:  # a key wrapped by a master key not in the environment
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None
    out.print(
        f"{total} data keys on {settings.topics.keys}: rewrapped {rewrapped} under master key "
        f"{master.current!r}",
        highlight=False,
    )


async def _rewrap(settings: Settings, master: MasterKeys) -> tuple[int, int]:
    from aiokafka import AIOKafkaProducer

    from streams.kafka.readers import iter_to_end

    topic, options = settings.topics.keys, settings.aiokafka_kwargs()
    ring = await read_keys(settings.bootstrap, topic, master, client_options=options)
    partition_of: dict[str, int] = {}
    async for record in iter_to_end(settings.bootstrap, topic, client_options=options):
        if record.key is not None and not record.key.startswith(TRANSIT_PREFIX):
            partition_of[record.key.decode()] = record.partition
    stale = sorted(ring.stale)
    producer = AIOKafkaProducer(**options, client_id="leadflow-keys", acks="all")
    await producer.start()
    try:
        sent = []
        for person in stale:
            value = ring.rewrapped(person)
            if value is not None:
                sent.append(
                    await producer.send(
                        topic, value, key=person.encode(), partition=partition_of[person]
                    )
                )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return len(stale), len(ring.wrapped)


@keys_app.command("seal-history")
def seal_history_command(
    broker: Annotated[str | None, typer.Option(help="kafka://host:port")] = None,
    topic_prefix: Annotated[str, typer.Option(help="topic name prefix")] = "",
) -> None:
    """Seal a history written before crypto-shredding (run once, with the workers stopped)."""
    from aiokafka.errors import KafkaError

    from streams.tools.seal_history import SealHistoryError, seal_history

    settings, master = _settings(broker, topic_prefix)
    try:
        report = asyncio.run(
            seal_history(settings, master, on_progress=lambda line: err.print(line, markup=False))
        )
    except (MasterKeyError, SealHistoryError) as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None
    except KafkaError as error:
        err.print(f"[red]error:[/red] {settings.bootstrap}: {error}", highlight=False)
        raise typer.Exit(1) from None
    history = settings.topics.history
    if report.resumed:
        out.print(f"resumed an earlier run at its {report.resumed} step", highlight=False)
    out.print(
        f"{history}: {report.records} records, {report.rewritten} rewritten sealed; "
        f"{report.keys_created} data keys made; {len(report.erased)} erased persons' personal "
        f"fields dropped; outcomes recorded on {report.outcomes_recorded} records; "
        f"{report.changelog_tombstones} table entries tombstoned (the workers rebuild them "
        "sealed from history at their next start)",
        highlight=False,
    )
    for version, count in sorted(report.missing_policy.items()):
        err.print(
            f"warning: {count} records of policy {version} not on {settings.topics.policies}: "
            "sealed without outcomes (verify cannot re-decide them either)",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
