"""Running the worker in-process: check the broker, create topics, publish the policy, run Faust.

Everything before `faust.Worker` runs on the same event loop Faust then uses, so the worker
is one process with one loop, started the same way by `leadflow worker`, `leadflow dev` and
the tests.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import NoReturn

import faust
import orjson
from aiokafka import AIOKafkaProducer

from lifecycle.policy import Policy
from streams.internals import without_spinner
from streams.kafka.exactly_once import probe_transactions
from streams.kafka.preflight import check_broker
from streams.kafka.topics import EnsureResult, ensure_topics, topic_specs
from streams.settings import Settings
from streams.worker.app import LeadflowApp, changelog_spec, make_app, shadows_of

log = logging.getLogger(__name__)


def policy_record(policy: Policy) -> tuple[bytes, bytes]:
    """(key, value) of the policy on the policies topic: keyed by its version."""
    value = {
        "version": policy.version,
        "name": policy.name,
        "policy": policy.model_dump(mode="json"),
    }
    return policy.version.encode(), orjson.dumps(value)


async def publish_policy(
    settings: Settings, policy: Policy, *, idempotent: bool = False, timeout: float = 10.0
) -> None:
    producer = AIOKafkaProducer(
        **settings.aiokafka_kwargs(), client_id="leadflow-policy", enable_idempotence=idempotent
    )
    try:
        await asyncio.wait_for(producer.start(), timeout)
        key, value = policy_record(policy)
        await asyncio.wait_for(
            producer.send_and_wait(settings.topics.policies, value, key=key), timeout
        )
    finally:
        await producer.stop()


async def idempotence_supported(settings: Settings, policy: Policy) -> bool:
    """Publish the policy with an idempotent producer: whether the broker takes one (Kafka
    does; Tansu answers aiokafka's InitProducerId v0 with an error). The worker's producer
    is idempotent only then (`internals.IdempotentProducer`)."""
    if not settings.idempotent_producer:
        return False
    try:
        await publish_policy(settings, policy, idempotent=True)
    except Exception as error:
        log.warning("the broker takes no idempotent producer (%s): retries may repeat", error)
        return False
    return True


async def prepare(settings: Settings, policy: Policy) -> tuple[EnsureResult, bool]:
    """What must hold before Faust touches the broker: (the topics, whether the producer can
    be idempotent). Raises TransactionsUnsupported, and BrokerAccessError (one line) when the
    settings' credentials or CA do not work."""
    await check_broker(settings)
    if settings.exactly_once:
        await probe_transactions(settings)
    shadows = shadows_of(settings, settings.topics)
    stage_changes = next(
        spec
        for spec in topic_specs(settings.topics, settings.partitions, settings.replication)
        if spec.name == settings.topics.stage_changes
    )
    specs = [
        *topic_specs(settings.topics, settings.partitions, settings.replication),
        changelog_spec(settings),
        *(stage_changes._replace(name=shadow.topic) for shadow in shadows),
    ]
    result = await ensure_topics(
        settings.bootstrap, specs, client_options=settings.aiokafka_kwargs()
    )
    idempotent = await idempotence_supported(settings, policy)
    for candidate in (policy, *(shadow.policy for shadow in shadows)):
        await publish_policy(settings, candidate, idempotent=idempotent)
    return result, idempotent


def banner(app: LeadflowApp, result: EnsureResult, seconds: float) -> str:
    settings, names = app.settings, app.names
    host = "127.0.0.1" if settings.web_host in ("0.0.0.0", "") else settings.web_host
    created = f", created {len(result.created)}" if result.created else ""
    return (
        f"leadflow worker {app.conf.id}: broker {settings.broker}, events {names.events} "
        f"({settings.partitions} partitions{created}), policy {app.policy.name} "
        f"{app.policy.version}, store {settings.store} in {settings.data_dir}, producer "
        f"{'idempotent' if app.idempotent_producer else 'not idempotent (the broker takes none)'}\n"
        f"leadflow worker: web on http://{host}:{settings.web_port} "
        f"(/healthz, /metrics; after the first assignment), prepared in {seconds:.2f}s"
    )


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the worker holds many long-lived states, and the default
    thresholds re-scan them every few hundred events (~30 % of the per-event cost measured)."""
    gc.collect()
    gc.freeze()  # everything loaded so far (modules, the app) is never garbage
    gc.set_threshold(20_000, 50, 100)


def run(settings: Settings, policy: Policy, *, loglevel: str = "info") -> NoReturn:
    """Prepare, then run the Faust worker until it is stopped (SIGTERM / SIGINT)."""
    started = time.monotonic()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    result, idempotent = loop.run_until_complete(prepare(settings, policy))
    app = make_app(settings, policy, idempotent_producer=idempotent)
    tune_gc()
    print(banner(app, result, time.monotonic() - started), file=sys.stderr, flush=True)
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
    )
    # Faust's progress spinner, when the level is warning or above, sets the root logger to
    # DEBUG so that every debug call (aiokafka logs one per send) builds a LogRecord for it:
    # measured 3.7 % of the worker's CPU at --loglevel warning. A service has no spinner.
    without_spinner(worker)
    worker.execute_from_commandline()
