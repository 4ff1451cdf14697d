"""The inactivity sweeper: turns elapsed time into an event, the only place the clock is read.

decide() applies the inactivity window when the person's next event arrives; a person who
never comes back would stay an mql forever. Every `sweep_interval` the sweeper looks at the
persons this worker owns and, for each whose next deadline (inactivity window or stage SLA)
has passed, publishes an `inactivity_timeout` event to the INPUT topic. The agent then
decides it like any other event, records it in history, and replay reproduces it.

The event id is derived from the person and the deadline, so repeated sweeps, two workers
during a rebalance, or a restart all produce the same id and the core deduplicates them.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import orjson

from events.inbound import EventType
from events.limits import MAX_ID
from streams.worker import metrics
from streams.worker.agent import PartitionProcessor
from streams.worker.outputs import Outputs

log = logging.getLogger(__name__)


def tick_id(person: str, deadline: datetime) -> str:
    """`timeout:<person>:<deadline>`, or with the person's SHA-256 when that is too long.

    Person ids may use the whole id limit, and a tick whose id broke it was dead-lettered:
    the person never timed out (found by the bad-input fault test). Ids only need to be
    unique per person (the core deduplicates within a person's history).
    """
    readable = f"timeout:{person}:{deadline.isoformat()}"
    if len(readable) <= MAX_ID:
        return readable
    digest = hashlib.sha256(person.encode()).hexdigest()
    return f"timeout:sha256:{digest}:{deadline.isoformat()}"


def tick(person: str, deadline: datetime, now: datetime) -> bytes:
    """The `inactivity_timeout` event for a person whose deadline passed before `now`."""
    return orjson.dumps(
        {
            "event_id": tick_id(person, deadline),
            "type": EventType.INACTIVITY_TIMEOUT.value,
            "person_id": person,
            "occurred_at": now.isoformat(),
            "source": "leadflow.sweeper",
        }
    )


async def sweep(
    processor: PartitionProcessor, outputs: Outputs, now: datetime | None = None
) -> int:
    """Publish a tick for every owned person past their deadline; return how many.

    `outputs` must be the sweeper's own: settling the agent's sends here would hide a failed
    delivery from the agent.
    """
    now = now or datetime.now(UTC)
    ticks = processor.ticks
    # Collected first: the agent changes these dicts while the sends below yield.
    due = [
        (partition, person, deadline)
        for partition in sorted(processor.owned)
        for person, deadline in processor.persons.get(partition, {}).items()
        # Strictly after: an event at exactly the deadline does not time out.
        if deadline is not None and deadline < now and ticks.get(person) != deadline
    ]
    if not due:
        metrics.SWEEPS.inc()
        return 0
    topic = processor.names.events
    for partition, person, deadline in due:
        await outputs.send(topic, person.encode(), tick(person, deadline, now), partition)
        ticks[person] = deadline
    try:
        await outputs.settle()
    except Exception:
        for _, person, deadline in due:  # publish them again on the next sweep
            if ticks.get(person) == deadline:
                del ticks[person]
        raise
    metrics.TIMEOUTS_PUBLISHED.inc(len(due))
    metrics.SWEEPS.inc()
    log.info("sweeper: published %d inactivity_timeout events", len(due))
    return len(due)
