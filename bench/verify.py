"""`leadflow verify --history F` of a history file, in one process and on every core (issue 13).

Makes the history a worker writes for the synthetic stream (`replay` of it, one record per
applied event, as `bench/history.py` does), tampers one record in `--tamper` so the report
has mismatches to put in order, then runs in turn for --rounds, each a subprocess started by
`bench.runner` (its own peak RSS and CPU seconds from wait4):

  jobs N     `leadflow verify --history F --jobs N` for each N of --jobs
  reference  with --reference, another build's plain `leadflow verify --history F`, each round

and prints the best wall time of each, CPU seconds, peak RSS, the speed-up of each N over
`--jobs 1` measured in the same rounds, and whether every run printed the same stdout
(sha256) as `--jobs 1`.

    python bench/verify.py [--events 1000000] [--persons 100000] [--jobs 1,2] [--rounds 3]
        [--reference CMD]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.runner import run  # noqa: E402

OUT = ROOT / "bench" / "out"


def make_history(events: int, persons: int, tamper: int) -> Path:
    from bench.replay import make_file
    from lifecycle.policy import load_preset
    from lifecycle.replay import replay
    from streams.tools.files import read_events

    path = OUT / f"verify-history-{events}-{persons}-{tamper}.jsonl"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        n = 0
        for decision in replay(read_events(make_file(events, persons)), load_preset("default")):
            if decision.duplicate:
                continue
            record = decision.to_wire()
            n += 1
            if tamper and n % tamper == 0:
                record["score"] = record["score"] + 1.0
            handle.write(orjson.dumps(record) + b"\n")
    tmp.rename(path)
    return path


def verify_cli(path: Path, jobs: int | None, program: list[str] | None = None) -> dict:
    command = [*(program or [sys.executable, "-m", "streams.cli"]), "verify", "--history"]
    command += [str(path), *(["--jobs", str(jobs)] if jobs is not None else [])]
    out = OUT / "verify-stdout.txt"
    started = time.perf_counter()
    with out.open("wb") as handle:
        code, rss_kb, cpu = run(command, handle, None, OUT / "verify-run-report.txt")
    seconds = time.perf_counter() - started
    if code not in (0, 1):  # 1: mismatches found
        raise SystemExit(f"{' '.join(command)} exited {code}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"seconds": seconds, "cpu": cpu, "rss_mb": rss_kb / 1024, "digest": digest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--tamper", type=int, default=5_000, help="tamper every Nth record")
    parser.add_argument("--jobs", default="1,2", help="--jobs values, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", help="another build's CLI (an absolute command)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    path = make_history(args.events, args.persons, args.tamper)
    records = sum(1 for _ in path.open("rb"))
    print(
        f"history: {path} ({records:,} records, {path.stat().st_size / 1e6:.0f} MB, made/found "
        f"in {time.perf_counter() - started:.1f} s), {os.cpu_count()} cores"
    )
    jobs = [int(j) for j in args.jobs.split(",")]
    best: dict[str, dict] = {}
    digests: set[str] = set()
    for n in range(1, args.rounds + 1):
        line = []
        for j in jobs:
            runs = {}
            if args.reference and j == jobs[0]:  # a build before --jobs: its plain command
                runs["reference"] = verify_cli(path, None, shlex.split(args.reference))
            runs[f"leadflow --jobs {j}"] = verify_cli(path, j)
            for label, r in runs.items():
                digests.add(r["digest"])
                line.append(f"{label} {r['seconds']:.2f} s")
                if label not in best or r["seconds"] < best[label]["seconds"]:
                    best[label] = r
        print(f"round {n}: " + ", ".join(line), flush=True)
    print(f"best of {args.rounds}, {records:,} history records:")
    for label, r in best.items():
        print(
            f"  {label:22} {r['seconds']:7.2f} s  {records / r['seconds']:>9,.0f} records/s  "
            f"CPU {r['cpu']:6.2f} s  peak RSS {r['rss_mb']:5.0f} MB (largest process)"
        )
    one = best.get("leadflow --jobs 1")
    if one is not None:
        for label, r in best.items():
            if label.startswith("leadflow") and r is not one:
                print(f"  {label} / --jobs 1: {one['seconds'] / r['seconds']:.2f}x faster")
        year = 50_000_000 / records * one["seconds"] / 60
        print(f"  a year (50M records) at --jobs 1: ~{year:.0f} min")
    same = len(digests) == 1
    print(f"stdout the same in every run: {'yes' if same else 'NO'} ({sorted(digests)[0][:12]}…)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
