"""`--exactly-once`: Kafka transactions where the broker has them, a clear refusal where not.

leadflow does not need transactions to be correct: event ids, deterministic change ids and
per-person sequences give consumers an exactly-once effect. Transactions additionally hide
the outputs of an attempt that failed. Some Kafka-protocol brokers (Tansu, the dev broker)
do not support the producer handshake aiokafka uses, so the worker checks before starting
instead of crashing later with an opaque `UnknownError`.
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaProducer

from streams.settings import Settings


class TransactionsUnsupported(RuntimeError):
    """The broker cannot run a transactional producer; the message says what to do."""


def refusal(broker: str, reason: str) -> str:
    return (
        f"--exactly-once needs Kafka transactions, and the broker at {broker} does not "
        f"support them (starting a transactional producer failed: {reason}). Run the worker "
        "without --exactly-once: leadflow already has an exactly-once effect through "
        "idempotency — a redelivered event_id changes nothing and re-emits the same "
        "changes, every stage change carries a deterministic change_id (person + sequence) "
        "that consumers use to drop repeats, and per-person sequence numbers in the history "
        "let the worker check and rebuild its state. Use --exactly-once only on Apache Kafka "
        "(or a broker with transaction support) if consumers must never see the outputs of "
        "a failed attempt."
    )


async def probe_transactions(settings: Settings, *, timeout: float = 10.0) -> None:
    """Start and stop a transactional producer; raise TransactionsUnsupported if it fails."""
    producer = AIOKafkaProducer(
        **settings.aiokafka_kwargs(),
        transactional_id=f"leadflow-probe-{uuid.uuid4().hex[:12]}",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        await asyncio.wait_for(producer.start(), timeout)
        await asyncio.wait_for(producer.begin_transaction(), timeout)
        await asyncio.wait_for(producer.abort_transaction(), timeout)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".rstrip(": ")
        if isinstance(error, asyncio.TimeoutError):
            reason = f"no answer within {timeout:g}s"
        raise TransactionsUnsupported(refusal(settings.broker, reason)) from None
    finally:
        await producer.stop()
