"""Replay throughput: ≥ 1M synthetic events over 100k persons from a JSONL file.

Measures, each in its own process (so peak RSS is per run):
  parse     decode_event per line only (the floor both folds share)
  baseline  the same rules as a plain dict-and-if fold, no transitions, no guard table
  leadflow  the real replay path: decode_event → decide → evolve (lifecycle.replay.Replayer)

Both folds must end with the same stage for every person and the same number of changes per
stage; the bench says so, or fails. Target: leadflow ≥ 200k events/s and ≥ 50 % of baseline.

    python bench/replay.py [--events 1000000] [--persons 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from events.inbound import Event  # noqa: E402
from lifecycle.policy import Policy, load_preset  # noqa: E402
from streams.files import ReadStats, read_events  # noqa: E402

OUT = ROOT / "bench" / "out"


def make_file(events: int, persons: int) -> Path:
    from streams.demo import synthetic_events

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"events-{events}-{persons}.jsonl"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        for event in synthetic_events(persons, events, seed=11, duplicates=0.002):
            handle.write(orjson.dumps(event) + b"\n")
    tmp.rename(path)
    return path


# --- the baseline: the same rules, written as one plain function over dicts ----------------

FORWARD = ("subscriber", "lead", "mql", "sql", "opportunity", "customer")
PATH = ("lead", "mql", "sql", "opportunity", "customer")
RANKS = {s: i for i, s in enumerate(PATH)}
SALES = {
    "sales_accepted": "sql",
    "opportunity_opened": "opportunity",
    "deal_won": "customer",
    "sales_rejected": "recycled",
    "deal_lost": "recycled",
}


def baseline_fold(events: Iterable[Event], p: Policy) -> tuple[dict[str, dict], Counter]:
    interest, hand = set(p.interest_actions), set(p.hand_raises)
    subscribe = set(p.subscribe_actions)
    timeout = set(p.timeout_stages)
    window = timedelta(days=p.inactivity_days)
    weights = p.scoring.weights if p.scoring else {}
    threshold = p.scoring.threshold if p.scoring else math.inf
    half_life = p.scoring.half_life_days if p.scoring else None
    activity = p.compiled.activity
    gated = {s.lower() for s in p.gated_sources}
    allowed = None if p.allowed_sources is None else {s.lower() for s in p.allowed_sources}
    icp, ucp, dm = p.icp, p.ucp, p.decision_makers
    icp_ind = {s.lower() for s in icp.industries}
    icp_cty = {s.lower() for s in icp.countries}
    ucp_dom = {s.lower() for s in ucp.email_domains}
    ucp_ind = {s.lower() for s in ucp.industries}
    ucp_cty = {s.lower() for s in ucp.countries}
    dm_sen = {s.lower() for s in dm.seniorities}
    states: dict[str, dict] = {}
    moves: Counter = Counter()

    def fits(prof: dict) -> bool:
        email = (prof.get("email") or "").lower()
        ind = (prof.get("industry") or "").lower() or None
        cty = (prof.get("country") or "").lower() or None
        title = (prof.get("job_title") or "").lower() or None
        sen = (prof.get("seniority") or "").lower() or None
        if "@" in email and email.rsplit("@", 1)[1] in ucp_dom:
            return False
        if (ind and ind in ucp_ind) or (cty and cty in ucp_cty):
            return False
        if title and any(k.lower() in title for k in ucp.title_keywords):
            return False
        if icp_ind and ((ind is None and not icp.unknown_passes) or (ind and ind not in icp_ind)):
            return False
        if icp_cty and ((cty is None and not icp.unknown_passes) or (cty and cty not in icp_cty)):
            return False
        emp = prof.get("employees")
        if emp is None:
            if (icp.employees_min is not None or icp.employees_max is not None) and not (
                icp.unknown_passes
            ):
                return False
        elif (icp.employees_min is not None and emp < icp.employees_min) or (
            icp.employees_max is not None and emp > icp.employees_max
        ):
            return False
        if dm.required:
            if sen and sen in dm_sen:
                return True
            if title and any(k.lower() in title for k in dm.title_keywords):
                return True
            return sen is None and title is None and dm.unknown_passes
        return True

    def open_source(src: str | None) -> bool:
        name = src.lower() if src else None
        if allowed is not None and (name is None or name not in allowed):
            return False
        return not (name is not None and name in gated)

    for e in events:
        s = states.get(e.person_id)
        if s is None:
            s = states[e.person_id] = {
                "stage": "new",
                "last": None,
                "score": 0.0,
                "score_at": None,
                "profile": {},
                "seen": {},
                "lead_source": None,
                "first": None,
                "seq": 0,
            }
        if e.event_id in s["seen"]:  # exact dedup by id (no content check)
            continue
        now, t, stage = e.occurred_at, e.type, s["stage"]
        if e.profile is not None:
            s["profile"] = {**s["profile"], **e.profile.model_dump(exclude_none=True)}
        changes = []
        if stage in timeout and s["last"] is not None and now > s["last"] + window:
            changes.append("recycled")
            stage = "recycled"
        if t in activity and (s["last"] is None or now > s["last"]):
            s["last"] = now
        scored = False
        w = weights.get(t)
        if w:
            sc, at = s["score"], s["score_at"]
            if sc and at is not None and half_life and now > at:
                sc *= 0.5 ** ((now - at).total_seconds() / 86400 / half_life)
            s["score"] = sc + w
            scored = s["score"] >= threshold
            if at is None or now > at:
                s["score_at"] = now
        s["first"] = s["first"] or e.source
        pre_lead = stage in ("new", "subscriber", "recycled")
        if t in subscribe and stage == "new":
            changes.append("subscriber")
            stage = "subscriber"
        elif t in SALES:
            dest = SALES[t]
            if dest == "recycled":
                if stage in ("lead", "mql", "sql", "opportunity"):
                    changes.append(dest)
                    stage = dest
            elif stage != "customer" and RANKS.get(stage, -1) < RANKS[dest]:
                if "mql" in PATH[RANKS.get(stage, -1) + 1 : RANKS[dest] + 1]:
                    s["lead_source"] = s["lead_source"] or s["first"]
                changes.append(dest)
                stage = dest
        elif t in hand and (pre_lead or stage == "lead") and fits(s["profile"]):
            if open_source(e.source):
                changes.append("mql")
                stage = "mql"
                s["lead_source"] = e.source or s["lead_source"]
            elif pre_lead:
                changes.append("lead")
                stage = "lead"
        elif t in interest and pre_lead and fits(s["profile"]):
            changes.append("lead")
            stage = "lead"
        if (
            scored
            and stage in ("new", "subscriber", "recycled", "lead")
            and fits(s["profile"])
            and open_source(e.source)
        ):
            changes.append("mql")
            stage = "mql"
            s["lead_source"] = e.source or s["lead_source"]
        s["seq"] += 1
        s["stage"] = stage
        s["seen"][e.event_id] = s["seq"]
        moves.update(changes)
    return states, moves


# --- runs -----------------------------------------------------------------------------------


def run_one(kind: str, path: Path, preset: str) -> dict:
    """One fold over the file, parsing included, through the reader `leadflow replay` uses."""
    policy = load_preset(preset)
    stats = ReadStats()
    events = read_events(path, stats=stats)
    started = time.perf_counter()
    if kind == "parse":
        for _ in events:
            pass
        finals, moves = {}, Counter()
    elif kind == "baseline":
        states, moves = baseline_fold(events, policy)
        finals = {k: v["stage"] for k, v in states.items()}
    else:
        from lifecycle.replay import Replayer

        replayer = Replayer(policy)
        moves = Counter()
        apply = replayer.apply
        for event in events:
            decision = apply(event)
            if not decision.duplicate:
                for change in decision.changes:
                    moves[change.to_stage] += 1
        finals = {k: v.stage for k, v in replayer.states.items()}
    elapsed = time.perf_counter() - started
    digest = hashlib.sha256(json.dumps(sorted(finals.items())).encode()).hexdigest()[:16]
    return {
        "kind": kind,
        "events": stats.lines,
        "seconds": round(elapsed, 3),
        "events_per_s": round(stats.lines / elapsed),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "moves": dict(sorted(moves.items())),
        "final_stages_digest": digest,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, Path(args.file), args.preset)))
        return 0

    started = time.perf_counter()
    path = make_file(args.events, args.persons)
    print(
        f"data: {path} ({path.stat().st_size / 1e6:.0f} MB, made/found in "
        f"{time.perf_counter() - started:.1f} s), policy preset {args.preset}"
    )
    results = {}
    for kind in ("parse", "baseline", "leadflow"):
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--file",
                str(path),
                "--preset",
                args.preset,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode:
            print(proc.stderr)
            return 1
        results[kind] = json.loads(proc.stdout)
        r = results[kind]
        print(
            f"{kind:9s} {r['events']:>9,} events in {r['seconds']:7.2f} s = "
            f"{r['events_per_s']:>9,} events/s   peak RSS {r['peak_rss_mb']:>5} MB"
        )
    ours, base = results["leadflow"], results["baseline"]
    ratio = ours["events_per_s"] / base["events_per_s"]
    print(f"leadflow / baseline = {ratio:.2f}   (target ≥ 0.50)")
    print(f"leadflow events/s   = {ours['events_per_s']:,}   (target ≥ 200,000)")
    print(f"stage changes: {ours['moves']}")
    same = ours["moves"] == base["moves"] and (
        ours["final_stages_digest"] == base["final_stages_digest"]
    )
    print(
        f"baseline applies the same rules: {'yes' if same else 'NO'} "
        f"(changes per stage and final stage per person compared)"
    )
    if not same:
        print(f"baseline moves: {base['moves']}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
