"""A bounded soak: a fixed rate below the worker's measured capacity, for ~30 s (60 s --long).

First a burst measures what the worker processes per second here (it also warms the worker
up: every person has a state before RSS is first read). Then events are published at 50 %
of that rate, and every second the lag (published minus processed, from `/healthz`; the
worker's own `leadflow_consumer_lag` from `/metrics` is printed beside it) and the RSS are
sampled. Lag must stay bounded and drain, RSS must stay flat, the worker log must hold no
error, and history must hold every event once.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.dev.demo import synthetic_events
from streams.kafka.readers import read_to_end
from tests.fixtures.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PERSONS = 2_000
WARMUP_EVENTS = 3_000
RATE_SHARE = 0.5  # of the measured capacity (other tests may share the machine)
MIN_RATE, MAX_RATE = 100, 3_000
MAX_LAG_SECONDS = 15.0  # lag bound, in seconds' worth of events at the soak rate
DRAIN_SECONDS = 30.0
RSS_SLACK_MB = 40.0
LAG_LINE = re.compile(rb"^leadflow_consumer_lag\{[^}]*\} ([0-9.e+]+)$", re.M)


async def processed(worker: Worker) -> int:
    status, body = await asyncio.to_thread(worker.request, "/healthz", token=None)
    assert status == 200, body
    return int(body["events_processed"])


async def metrics_lag(worker: Worker) -> float:
    def fetch() -> bytes:
        import urllib.request

        with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
            return response.read()

    return sum(float(v) for v in LAG_LINE.findall(await asyncio.to_thread(fetch)))


class Pacer:
    """Publishes events at a fixed rate in 50 ms slices; counts acked sends."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, events: Any) -> None:
        self.producer, self.topic, self.events = producer, topic, events
        self.sent = 0

    async def burst(self, count: int) -> None:
        futures = []
        for _ in range(count):
            event = next(self.events)
            futures.append(await self._send(event))
        await asyncio.gather(*futures)
        self.sent += count

    async def run(self, rate: float, seconds: float) -> None:
        started = time.monotonic()
        due = 0
        pending: list[Any] = []
        while (elapsed := time.monotonic() - started) < seconds:
            target = int(elapsed * rate)
            for _ in range(target - due):
                pending.append(await self._send(next(self.events)))
            due = target
            if pending:
                await asyncio.gather(*pending)
                self.sent += len(pending)
                pending = []
            await asyncio.sleep(0.05)

    async def _send(self, event: dict[str, Any]) -> Any:
        return await self.producer.send(
            self.topic, orjson.dumps(event), key=event["person_id"].encode()
        )


async def test_a_steady_rate_below_capacity_keeps_lag_bounded_and_memory_flat(
    broker, make_topics, tmp_path: Path, fault_report, long_run
):
    seconds = 60.0 if long_run else 30.0
    names = await make_topics(partitions=4)
    worker = Worker(broker, names, tmp_path, "soak")
    # Dated from now on: no deadline passes during the run, so the sweeper adds no events.
    needed = WARMUP_EVENTS + int(MAX_RATE * seconds * 1.1)
    events = synthetic_events(PERSONS, needed, seed=3, start=datetime.now(UTC))
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=10)
    samples: list[tuple[float, int, float, float | None]] = []
    try:
        await worker.ready()
        await producer.start()
        pacer = Pacer(producer, names.events, events)

        # Capacity: a burst, timed until processed. It also creates every person's state.
        started = time.monotonic()
        await pacer.burst(WARMUP_EVENTS)
        while await processed(worker) < pacer.sent:
            assert worker.alive and time.monotonic() - started < 90, worker.tail()
            await asyncio.sleep(0.1)
        capacity = WARMUP_EVENTS / (time.monotonic() - started)
        rate = max(MIN_RATE, min(MAX_RATE, RATE_SHARE * capacity))
        rss_start = worker.rss_mb()
        assert rss_start is not None
        print(f"\ncapacity ≈ {capacity:.0f} events/s; soak at {rate:.0f}/s for {seconds:.0f} s")

        async def sample() -> None:
            t0 = time.monotonic()
            while True:
                lag = pacer.sent - await processed(worker)
                samples.append(
                    (time.monotonic() - t0, lag, await metrics_lag(worker), worker.rss_mb())
                )
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample())
        try:
            await pacer.run(rate, seconds)
            drain_started = time.monotonic()
            while await processed(worker) < pacer.sent:
                assert time.monotonic() - drain_started < DRAIN_SECONDS, (
                    f"lag did not drain in {DRAIN_SECONDS} s: {samples[-5:]}"
                )
                await asyncio.sleep(0.2)
            drain_s = time.monotonic() - drain_started
        finally:
            sampler.cancel()
        rss_end = worker.rss_mb()
        alive = worker.alive
        log = worker.log.read_text(errors="replace")
        history = await read_to_end(broker.bootstrap, names.history, value_only=True)
    finally:
        await producer.stop()
        worker.kill()

    lags = [lag for _, lag, _, _ in samples]
    soak_events = pacer.sent - WARMUP_EVENTS
    max_lag = max(lags)
    print("t(s)  lag  metric-lag  rss(MB)")
    for t, lag, metric, rss in samples[:: max(1, len(samples) // 12)]:
        print(f"{t:5.1f} {lag:5d} {metric:8.0f} {rss or 0:8.1f}")
    print(
        f"soak: {soak_events} events at {rate:.0f}/s, lag max {max_lag} (mean "
        f"{sum(lags) / len(lags):.0f}), drained in {drain_s:.1f} s, RSS {rss_start:.1f} → "
        f"{rss_end:.1f} MB"
    )
    fault_report.add(
        "soak",
        f"{seconds:.0f}s at {rate:.0f}/s (capacity ≈ {capacity:.0f}/s)",
        events=pacer.sent,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        lag_max=max_lag,
        drain_s=round(drain_s, 1),
    )

    assert alive, worker.tail()
    assert len(samples) >= seconds * 0.5
    assert max_lag <= MAX_LAG_SECONDS * rate, samples
    assert rss_end is not None and rss_end <= rss_start * 1.5 + RSS_SLACK_MB
    for marker in ("Traceback", "[ERROR]", "[CRITICAL]"):
        assert marker not in log, log[log.index(marker) - 500 :][:3000]
    ids = [orjson.loads(v)["event"]["event_id"] for v in history]
    assert len(ids) == len(set(ids)) == pacer.sent
