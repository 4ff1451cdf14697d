"""A shadow policy on live traffic produces exactly what `leadflow simulate` predicts offline."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from lifecycle.policy import load_preset
from lifecycle.replay import replay
from lifecycle.simulate import simulate
from streams.dev.broker import free_port
from streams.dev.demo import synthetic_events
from streams.dev.process import ChildProcess
from streams.kafka.readers import read_to_end
from streams.worker.shadow import shadow_topic
from tests.fixtures.worker import Opened

pytestmark = pytest.mark.integration

LEADFLOW = str(Path(sys.executable).with_name("leadflow"))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return orjson.loads(response.read())


async def test_shadow_topic_and_funnel_match_the_offline_simulation(broker, make_topics, tmp_path):
    names = await make_topics(partitions=4)
    prefix = names.events.removesuffix(".leadflow.events")
    active, candidate = load_preset("default"), load_preset("seed")
    port = free_port()
    worker = ChildProcess(
        [
            LEADFLOW,
            "worker",
            "--broker",
            broker.url,
            "--topic-prefix",
            prefix,
            "--preset",
            "default",
            "--shadow",
            "seed",
            "--data-dir",
            str(tmp_path / "data"),
            "--web-port",
            str(port),
            "--web-host",
            "127.0.0.1",
            "--session-timeout",
            "6",
            "--store",
            "memory",
            "--sweep-interval",
            "3600",
        ],
        tmp_path / "worker.log",
    ).start()
    try:
        events = list(synthetic_events(300, 3_000, seed=5))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=10)
        await producer.start()
        try:
            for event in events:
                await producer.send(
                    names.events, orjson.dumps(event), key=event["person_id"].encode()
                )
            await producer.flush()
        finally:
            await producer.stop()

        deadline = time.monotonic() + 90
        history: list = []
        while time.monotonic() < deadline:
            history = await read_to_end(broker.bootstrap, names.history, value_only=True)
            if len(history) >= len(events):
                break
            await asyncio.sleep(1)
        assert len(history) == len(events), "the worker did not apply every event in time"
        opened = await Opened.load(broker.bootstrap, names)  # personal fields are sealed
        applied = [opened.history(v).event for v in history]

        predicted = simulate(applied, active, candidate)
        topic = shadow_topic(names, candidate)
        shadow = [
            opened.change(v) for v in await read_to_end(broker.bootstrap, topic, value_only=True)
        ]
        live = [
            opened.change(v)
            for v in await read_to_end(broker.bootstrap, names.stage_changes, value_only=True)
        ]

        # The shadow topic holds seed's decisions, the live topic default's: exactly the
        # changes an offline replay of the same events under each policy produces.
        def facts(changes) -> set[tuple]:
            return {(c.change_id, c.to_stage, tuple(c.passed_through)) for c in changes}

        def offline(policy) -> set[tuple]:
            return facts(c for d in replay(applied, policy) if not d.duplicate for c in d.changes)

        assert {c.policy_version for c in shadow} == {candidate.version}
        assert facts(shadow) == offline(candidate)
        assert facts(live) == offline(active)
        assert predicted.funnel_b.reached["mql"] > predicted.funnel_a.reached["mql"]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shadow_funnel = get_json(f"http://127.0.0.1:{port}/funnel?policy={candidate.version}")
            live_funnel = get_json(f"http://127.0.0.1:{port}/funnel")
            if shadow_funnel["changes_seen"] >= len(shadow) and live_funnel["changes_seen"] >= len(
                live
            ):
                break
            await asyncio.sleep(0.5)
        assert shadow_funnel["shadow"] is True
        assert shadow_funnel["reached"] == predicted.funnel_b.reached
        assert live_funnel["reached"] == predicted.funnel_a.reached
        assert shadow_funnel["current"] == predicted.funnel_b.current
        assert shadow_funnel["conversion"] == predicted.funnel_b.conversion
        differing = {o.person_id for o in predicted.differing}
        assert differing, "the two policies should disagree on someone"
        policies = get_json(f"http://127.0.0.1:{port}/policies")
        assert {(p["version"], p["role"]) for p in policies} == {
            (active.version, "active"),
            (candidate.version, "shadow"),
        }
    finally:
        worker.kill()
