"""`leadflow replay --broker` (or `verify`): the history topic on genuine Kafka, timed as a
whole process, with its own peak RSS (issue 13: a year of history is ~50M records).

Starts a local broker, writes the history a replay of the synthetic stream records (as a
worker would, keyed by person, over --partitions), then runs `leadflow replay --broker … >
/dev/null` (`--command verify`: `leadflow verify --broker …`; `funnel` and `simulate` too)
for --rounds, and with --reference another build's CLI in the same rounds (main before a
change), with --jobs N the command on N processes too (`verify` only: the partitions split
among them), and prints the best of each: wall, CPU, records/s, peak RSS, and the ratio to
the reference and of --jobs N to the plain command. Peak RSS per history record tells
whether the command holds the topic in memory. `--share 0` runs the command as one share of
a run (`--partitions 0 --partial-out FILE`, the partial hashed with stdout): whether a share
holds its partition in memory.

    python bench/history.py [--events 300000] [--persons 30000] [--partitions 4]
        [--rounds 2] [--reference CMD] [--broker-kind kafka|tansu] [--command replay|verify]
        [--jobs N] [--command funnel|simulate --share 0 --partitions 2]

A reference from another tree (`git archive main | tar -x -C SRC`): `--reference "env
PYTHONPATH=SRC .venv/bin/python -P -m streams.cli"` (without `-P`, `-m` imports the tree of
the working directory first, and the reference is this build).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shlex
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from bench.runner import run  # noqa: E402
from lifecycle.policy import load_preset  # noqa: E402
from lifecycle.replay import replay  # noqa: E402
from streams.dev.broker import local_broker  # noqa: E402
from streams.dev.demo import synthetic_events  # noqa: E402
from streams.kafka.topics import TopicNames, ensure_topics, topic_specs  # noqa: E402
from streams.tools.files import read_events  # noqa: E402

OUT = ROOT / "bench" / "out"


def history_records(events: int, persons: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of every history record a replay of the synthetic stream writes."""
    path = OUT / f"history-events-{events}-{persons}.jsonl"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        made = synthetic_events(persons, events, seed=11, duplicates=0.002)
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in made))
    return [
        (d.person_id.encode(), orjson.dumps(d.to_wire()))
        for d in replay(read_events(path), load_preset("default"))
        if not d.duplicate
    ]


async def fill(bootstrap: str, names: TopicNames, partitions: int, records: list) -> None:
    await ensure_topics(bootstrap, topic_specs(names, partitions))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks="all"
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send(names.history, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


#: What each command is run with, besides the broker (`--share` adds its options).
COMMANDS = {
    "replay": ["replay"],
    "verify": ["verify"],
    "funnel": ["funnel", "--preset", "default"],
    "simulate": ["simulate", "--policy", "default", "--against", "growth"],
}


def timed(command: list[str], partial: Path | None = None) -> dict:
    """One run, its stdout into a file (hashed with the partial it writes, then removed)."""
    out = OUT / "history-stdout.jsonl"
    started = time.perf_counter()
    with out.open("wb") as handle:
        code, rss, cpu = run(command, handle, None, OUT / "history-run-report.txt")
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(f"{shlex.join(command)} failed with exit code {code}")
    hashed = hashlib.sha256(out.read_bytes())
    out.unlink()
    if partial is not None:
        hashed.update(partial.read_bytes())
        partial.unlink()
    digest = hashed.hexdigest()
    return {"seconds": seconds, "cpu": cpu, "rss_mb": rss / 1024, "sha256": digest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--persons", type=int, default=30_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reference", help="another build's leadflow command, same rounds")
    parser.add_argument("--broker-kind", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--command", choices=tuple(COMMANDS), default="replay")
    parser.add_argument("--share", help="run as this share: --partitions SHARE --partial-out")
    parser.add_argument("--jobs", type=int, default=0, help="also the command on N processes")
    args = parser.parse_args()

    print(f"history of {args.events:,} events over {args.persons:,} persons…", flush=True)
    records = history_records(args.events, args.persons)
    leadflow = [str(Path(sys.executable).with_name("leadflow"))]
    programs = {"leadflow": (leadflow, [])}
    if args.reference:
        programs = {"reference": (shlex.split(args.reference), []), **programs}
    if args.jobs > 1:
        programs[f"--jobs {args.jobs}"] = (leadflow, ["--jobs", str(args.jobs)])
    options: dict = {"log_path": OUT / f"history-{args.broker_kind}.log"}
    if args.broker_kind == "kafka":
        options["data_dir"] = OUT / "data" / f"history-{uuid.uuid4().hex[:6]}"
    best: dict[str, dict] = {}
    with local_broker(args.broker_kind, **options) as broker:
        prefix = f"bench-history-{uuid.uuid4().hex[:6]}"
        names = TopicNames.prefixed(prefix)
        started = time.perf_counter()
        asyncio.run(fill(broker.bootstrap, names, args.partitions, records))
        print(f"{len(records):,} history records written in {time.perf_counter() - started:.1f} s")
        os.environ.pop("LEADFLOW_MASTER_KEY", None)  # history as written here: not sealed
        for n in range(1, args.rounds + 1):
            line = []
            for name, (program, extra) in programs.items():
                command = [*program, *COMMANDS[args.command], "--broker", broker.url]
                command += ["--topic-prefix", prefix, *extra]
                partial = None
                if args.share is not None:
                    partial = OUT / "history-partial.json"
                    command += ["--partitions", args.share, "--partial-out", str(partial)]
                result = timed(command, partial)
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
                line.append(f"{name} {result['seconds']:.2f} s, {result['rss_mb']:.0f} MB")
            print(f"round {n}: " + "; ".join(line), flush=True)
    shared = "" if args.share is None else f" --partitions {args.share}"
    print(
        f"best of {args.rounds} rounds, {len(records):,} history records, {args.command}{shared}:"
    )
    for name, r in best.items():
        per = r["rss_mb"] * 1024 * 1024 / len(records)
        print(
            f"  {name:10} {r['seconds']:7.2f} s = {len(records) / r['seconds']:>9,.0f} records/s, "
            f"{r['cpu']:6.2f} CPU s, peak RSS {r['rss_mb']:5.0f} MB ({per:,.0f} bytes a record)"
        )
    if "reference" in best:
        ref, new = best["reference"], best["leadflow"]
        same = "same stdout" if ref["sha256"] == new["sha256"] else "STDOUT DIFFERS"
        print(
            f"leadflow / reference: speed {ref['seconds'] / new['seconds']:.2f}x, "
            f"peak RSS {new['rss_mb'] / ref['rss_mb']:.2f}x ({same})"
        )
    many = best.get(f"--jobs {args.jobs}")
    if many is not None:
        one = best["leadflow"]
        same = "same stdout" if one["sha256"] == many["sha256"] else "STDOUT DIFFERS"
        print(f"--jobs {args.jobs} / plain: speed {one['seconds'] / many['seconds']:.2f}x ({same})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
