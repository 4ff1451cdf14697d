"""Analysts' commands: `calibrate` (the next policy from measured conversion) and the cohort
view of `funnel`. They read events or history like the other offline commands and only call
`lifecycle.calibrate` and `lifecycle.cohorts`; nothing here holds a rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lifecycle.calibrate import DEFAULT_MIN_MQLS
from streams.cli.common import (
    EventsOpt,
    HistoryBrokerOpt,
    HistoryPrefixOpt,
    StrictOpt,
    fail,
    out,
)


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def _interval(rate: dict[str, Any]) -> str:
    if not rate["base"]:
        return "–"
    low, high = _pct(rate["low"]), _pct(rate["high"])
    return f"{_pct(rate['rate'])} [{low}, {high}] ({rate['hits']}/{rate['base']})"


def calibrate(
    events: EventsOpt = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", "-p", help="the current policy file", dir_okay=False)
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="or a shipped preset")] = None,
    min_mqls: Annotated[
        int, typer.Option("--min-mqls", min=1, help="MQLs a source needs to be measured")
    ] = DEFAULT_MIN_MQLS,
    maturity: Annotated[
        str | None,
        typer.Option(help="seed, growth or mature (default: the preset name, else growth)"),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="write the proposed policy here", dir_okay=False)
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    broker: HistoryBrokerOpt = None,
    topic_prefix: HistoryPrefixOpt = "",
    strict: StrictOpt = False,
    mapping: Annotated[
        Path | None,
        typer.Option("--mapping", "-m", help="read a CSV --events file with this mapping"),
    ] = None,
) -> None:
    """Measure conversion per lead source and propose the next policy, with its what-if."""
    from lifecycle.calibrate import calibrate as run
    from lifecycle.calibrate import proposal_yaml
    from streams.cli.reading import EventReader, policy_of

    if format not in ("table", "json"):
        raise fail("--format is table or json")
    rules = policy_of(policy, preset)
    reader = EventReader(strict, mapping)
    stream = list(reader.events(events, broker, topic_prefix))
    try:
        result = run(stream, rules, min_mqls=min_mqls, maturity=maturity)
    except ValueError as error:
        raise fail(str(error)) from None
    if out_file is not None:
        out_file.write_text(proposal_yaml(result), encoding="utf-8")
    data = result.to_dict()
    if format == "json":
        out.print_json(data={**data, "out": None if out_file is None else str(out_file)})
        reader.summary()
        return
    _print(data)
    if out_file is not None:
        out.print(
            f"wrote {out_file} (version {result.proposed.version}); "
            f"check it with: leadflow policy check {out_file}",
            highlight=False,
        )
    reader.summary()


def _print(data: dict[str, Any]) -> None:
    source = data["data"]
    out.print(
        f"{source['events']:,} events from {source['first']} to {source['last']}, "
        f"sha256 {source['sha256'][:16]}; policy {data['policy']['name']} "
        f"({data['policy']['version']}), maturity {data['maturity']}, "
        f"at least {data['min_mqls']} MQLs per source",
        highlight=False,
    )
    table = Table(title="measured conversion by lead source (MQLs the policy made, 95 % Wilson)")
    for column in ("lead source", "MQLs", "sales-sourced", "mql→sql", "mql→customer"):
        table.add_column(column, justify="left" if column == "lead source" else "right")
    for column in ("configured", "measured", "gate", "why"):
        table.add_column(column)
    for s in data["sources"]:
        configured = (
            "–"
            if s["configured_conversion"] is None
            else f"{_pct(s['configured_conversion'])} {s['configured_temperature'] or ''}"
        )
        measured = s["measured_temperature"] or (
            "insufficient data" if not s["enough_data"] else "–"
        )
        if s["contradicts"]:
            measured = f"[red]{measured} (contradicts the label)[/red]"
        before = "gated" if s["gated_now"] else "open"
        after = "gated" if s["gated_proposed"] else "open"
        gate = before if before == after else f"[bold]{before} → {after}[/bold]"
        table.add_row(
            s["source"],
            str(s["mqls"]),
            str(s["sales_sourced_mqls"]),
            _interval(s["mql_to_sql"]),
            _interval(s["mql_to_customer"]),
            configured,
            measured,
            gate,
            s["gating_reason"],
        )
    out.print(table)
    t = data["thresholds"]
    out.print(
        f"thresholds (hot / warm): {_thresholds(t['current'])} → {_thresholds(t['proposed'])}"
    )
    out.print(f"policy diff ({data['policy']['version']} → {data['proposed_policy']['version']}):")
    for change in data["diff"]:
        out.print(
            f"  {change['key']}: {json.dumps(change['before'])} → {json.dumps(change['after'])}",
            highlight=False,
        )
    if not data["diff"]:
        out.print("  identical rules")
    w = data["what_if"]
    table = Table(title="what-if of switching (replayed with simulate)")
    for column in ("lead source", "MQLs kept", "lost", "gained"):
        table.add_column(column, justify="left" if column == "lead source" else "right")
    for name, row in w["by_source"].items():
        table.add_row(name, str(row["kept"]), str(row["lost"]), str(row["gained"]))
    out.print(table)
    out.print(
        f"MQLs kept {w['mqls_kept']}, lost {w['mqls_lost']}, gained {w['mqls_gained']}; "
        f"expected customers lost {w['expected_customers_lost']:g}, "
        f"gained {w['expected_customers_gained']:g} at the measured rates",
        highlight=False,
    )


def _thresholds(t: dict[str, float] | None) -> str:
    return "none" if t is None else f"{t['hot']:g} / {t['warm']:g}"


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command()(calibrate)


# --- funnel --cohort ------------------------------------------------------------------------


def _is_history_file(path: Path | None) -> bool:
    if path is None or not path.is_file() or path.suffix.lower() == ".csv":
        return False
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                return b'"sequence"' in line[:400] and b'"event"' in line
    return False


def cohort_funnel(
    events: list[Path] | None,
    broker: str | None,
    prefix: str,
    rules: Any,
    period: str,
    by: str | None,
    format: str,
    strict: bool,
    mapping: Path | None = None,
) -> None:
    """`funnel --cohort`: as reported (recorded history) and restated (`rules`), side by side."""
    from lifecycle.cohorts import GROUPS, PERIODS, cohorts
    from lifecycle.replay import replay
    from streams.cli.reading import EventReader, one_file

    if period not in PERIODS:
        raise fail(f"--cohort is {' or '.join(PERIODS)}")
    if by is not None and by not in GROUPS:
        raise fail(f"--by is one of {', '.join(GROUPS)}")
    reader = EventReader(strict, mapping)
    reported = None
    file = one_file(events, mapping)
    if broker or (mapping is None and _is_history_file(file)):
        records = list(reader.history(file, broker, prefix))
        reported = cohorts((c for r in records for c in r.changes), period, by)
        stream = [r.event for r in records]
    else:
        stream = list(reader.events(events, broker, prefix))
    decided = (c for d in replay(stream, rules) if not d.duplicate for c in d.changes)
    restated = cohorts(decided, period, by)
    print_cohorts(reported, restated, rules.name, rules.version, format)
    reader.summary()


def print_cohorts(reported: Any, restated: Any, name: str, version: str, format: str) -> None:
    """`funnel --cohort`'s report: as reported (None without a history) and restated."""
    data = {
        "restated_under": {"name": name, "version": version},
        "as_reported": None if reported is None else reported.to_dict(),
        "restated": restated.to_dict(),
    }
    if format == "json":
        out.print_json(data=data)
    else:
        if reported is None:
            out.print("as reported: needs a history (export-history file or --broker)")
        else:
            versions = ", ".join(f"{v} ({n})" for v, n in reported.policy_versions.items())
            _print_cohorts(reported.rows, f"as reported (policy versions live: {versions})")
        _print_cohorts(restated.rows, f"restated under {name} ({version})")


def _print_cohorts(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=f"cohorts {title}")
    for column in ("cohort", "group", "stage", "entered", "sales-sourced"):
        table.add_column(
            column, justify="right" if column in ("entered", "sales-sourced") else "left"
        )
    for column in ("→ next stage", "→ customer", "days p50", "days p90"):
        table.add_column(column, justify="right")
    for row in rows:
        days = row["days_in_stage"]
        table.add_row(
            row["cohort"],
            row["group"],
            row["stage"],
            str(row["entered"]),
            str(row["sales_sourced"]),
            f"{row['next_stage']} {_interval(row['to_next'])}",
            _interval(row["to_customer"]),
            "–" if days["p50"] is None else f"{days['p50']:g}",
            "–" if days["p90"] is None else f"{days['p90']:g}",
        )
    out.print(table)


# --- funnel --by ----------------------------------------------------------------------------


def attribution(report: Any, by: str, format: str) -> None:
    """`funnel --by`: conversion from mql on, by lead source, first or last touch, touches."""
    from lifecycle.cohorts import GROUPS

    if by not in GROUPS:
        raise fail(f"--by is one of {', '.join(GROUPS)}")
    key = {
        "source": "conversion_by_source",
        "first_touch": "conversion_by_first_touch",
        "last_touch": "conversion_by_last_touch",
        "touches": "conversion_by_touches",
    }[by]
    groups = report.to_dict()[key]
    if format == "json":
        out.print_json(data={"by": by, "conversion": groups})
        return
    table = Table(title=f"conversion by {by.replace('_', ' ')}, from those who entered each stage")
    table.add_column(by)
    steps = ("mql->sql", "sql->opportunity", "opportunity->customer", "mql->customer")
    for step in steps:
        table.add_column(step, justify="right")
    for name, row in groups.items():
        cells = []
        for step in steps:
            entry = row[step]
            rate = entry["rate"]
            cells.append("–" if rate is None else f"{rate:.1%} ({entry['to']}/{entry['from']})")
        table.add_row(name, *cells)
    out.print(table)
