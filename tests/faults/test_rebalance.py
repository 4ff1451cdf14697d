"""Rebalance: two workers share a 4-partition topic; each in turn stops mid-stream and returns.

One steady stream, two faults: first worker B gets SIGTERM (a clean shutdown, a deploy) and
comes back, then worker A is killed with kill -9 (a crash: the survivor takes the partitions
only after the session timeout) and comes back. The partitions move four times under load
(Tansu also ignores a clean leave: BROKER.md). Both variants in one stream keep the suite
short and make the second fault hit partitions that were just handed over. Afterwards the
topics must show no lost, duplicated or re-decided event (see harness).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from tests.faults.harness import Publisher, make_stream, settings_for, settled_check_repaired
from tests.fixtures.worker import Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ALL = [0, 1, 2, 3]


async def test_workers_leaving_by_sigterm_and_kill_9_and_rejoining_lose_and_redecide_nothing(
    broker, make_topics, tmp_path, fault_report, long_run
):
    events = 40_000 if long_run else 20_000
    names = await make_topics(partitions=4)
    settings = settings_for(broker.url, names)
    records = make_stream(events, events // 10, seed=21)
    started = time.monotonic()

    a = Worker(broker, names, tmp_path, "a", store="rocksdb")
    b = Worker(broker, names, tmp_path, "b", store="rocksdb")

    async def split() -> bool:
        owned = [await a.owned(), await b.owned()]
        return all(owned) and sorted(p for ps in owned for p in ps) == ALL

    def owns_all(worker: Worker) -> Callable[[], Awaitable[bool]]:
        async def check_all() -> bool:
            return sorted(await worker.owned()) == ALL

        return check_all

    await wait_for(split, 120, "two workers to share the 4 partitions")
    rss_start = a.rss_mb()
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / 40)
    timings: dict[str, float] = {}

    async def leave_and_return(leaving: Worker, survivor: Worker, how: str) -> None:
        left = time.monotonic()
        if how == "sigterm":
            code = leaving.terminate()
            assert code == 0, f"SIGTERM: exit code {code}: {leaving.tail()}"
        else:
            leaving.kill()
        await wait_for(owns_all(survivor), 120, f"{survivor.name} to take every partition")
        timings[f"{how}_takeover_s"] = round(time.monotonic() - left, 1)
        assert survivor.alive, survivor.tail()
        leaving.start()
        back = time.monotonic()
        await wait_for(split, 120, f"{leaving.name} to get partitions back after {how}")
        timings[f"{how}_handback_s"] = round(time.monotonic() - back, 1)

    await publisher.wait(at_least=len(records) // 5)
    await leave_and_return(b, a, "sigterm")
    await leave_and_return(a, b, "kill-9")
    await publisher.wait(timeout=180)

    def alive() -> bool:
        return a.alive and b.alive

    gaps, repaired, outcome = await settled_check_repaired(
        settings, f"rebalance: {timings}", alive=alive
    )
    fault_report.add(
        "rebalance: 2 workers, leave + rejoin",
        "SIGTERM B + rejoin, kill -9 A + rejoin",
        **outcome.counts(),
        rss_start_mb=rss_start,
        rss_end_mb=b.rss_mb(),
        gaps=gaps,
        repaired=repaired,
        **timings,
        seconds=round(time.monotonic() - started, 1),
    )
    assert alive()
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids
    assert outcome.inbound == len(records) + outcome.ticks
    assert outcome.expected > 1_000 and outcome.dead_letters >= outcome.invalid > 0


async def test_a_third_worker_joining_and_leaving_loses_and_redecides_nothing(
    broker, make_topics, tmp_path, fault_report, long_run
):
    """2 → 3 workers → 2 → 1 under one stream. With 4 partitions the third waits as a hot
    spare: Faust's sticky assignor gives each member at most ceil(4/3) = 2 and moves
    nothing from members at that capacity, so the newcomer gets no partition until one
    leaves. Then SIGTERM of one (the spare takes its share) and kill -9 of another (the last
    one takes everything). Times of each hand-over are reported."""
    events = 30_000 if long_run else 15_000
    names = await make_topics(partitions=4)
    settings = settings_for(broker.url, names)
    records = make_stream(events, events // 10, seed=22)
    started = time.monotonic()
    a, b = (Worker(broker, names, tmp_path, name, store="rocksdb") for name in ("a", "b"))

    def shared_by(workers: list[Worker]) -> Callable[[], Awaitable[bool]]:
        async def check_shared() -> bool:
            owned = [await w.owned() for w in workers]
            return all(owned) and sorted(p for ps in owned for p in ps) == ALL

        return check_shared

    await wait_for(shared_by([a, b]), 120, "two workers to share the 4 partitions")
    rss_start = a.rss_mb()
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / 30)
    timings: dict[str, float] = {}

    await publisher.wait(at_least=len(records) // 5)
    mark = time.monotonic()
    c = Worker(broker, names, tmp_path, "c", store="rocksdb")

    async def c_assigned() -> bool:  # its first assignment (empty) is in its log
        return "Setting newly assigned partitions" in c.tail(200_000)

    await wait_for(c_assigned, 120, "the third worker to join the group")
    timings["join_3rd_s"] = round(time.monotonic() - mark, 1)
    await wait_for(shared_by([a, b]), 120, "a and b to resume with their partitions (sticky)")
    assert await c.owned() == [], "the third worker took partitions from members at capacity"

    mark = time.monotonic()
    assert a.terminate() == 0, a.tail()
    await wait_for(shared_by([b, c]), 120, "the spare c to take a's partitions after SIGTERM")
    timings["sigterm_takeover_s"] = round(time.monotonic() - mark, 1)

    mark = time.monotonic()
    b.kill()
    await wait_for(shared_by([c]), 120, "c to take every partition after kill -9 of b")
    timings["kill_9_takeover_s"] = round(time.monotonic() - mark, 1)
    await publisher.wait(timeout=180)

    gaps, repaired, outcome = await settled_check_repaired(
        settings, f"rebalance 3: {timings}", alive=lambda: c.alive
    )
    fault_report.add(
        "rebalance: 2 -> 3 workers -> 1",
        "3rd joins (spare); SIGTERM one, kill -9 another",
        **outcome.counts(),
        rss_start_mb=rss_start,
        rss_end_mb=c.rss_mb(),
        gaps=gaps,
        repaired=repaired,
        **timings,
        seconds=round(time.monotonic() - started, 1),
    )
    assert c.alive
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids
    assert outcome.inbound == len(records) + outcome.ticks
